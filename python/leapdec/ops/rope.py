"""``rope_append_paged_kv``: RoPE by logical position fused with the paged cache write."""

from __future__ import annotations

import torch

from leapdec.ops._lib import OPS, as_int32, should_check_cuda_values
from leapdec.ops.kv_cache import _check_slot_values


def rope_append_paged_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping,
                         is_neox: bool = True):
    """Rotate ``q [N, H_q, D]`` in place and ``k [N, H_kv, D]`` by RoPE at ``positions [N]``
    (logical positions, any order), then write the rotated k and v into the cache at
    ``slot_mapping [N]`` (slot < 0 skipped). ``cos_sin_cache [max_pos, rotary_dim]`` holds cos
    then sin (``leapdec.models.rope.rope_cos_sin_cache``); the first ``rotary_dim`` dims rotate.
    Returns q. k itself is left unchanged."""
    slot_mapping = as_int32(slot_mapping, "slot_mapping")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"positions must be an int32 or int64 tensor, got {positions.dtype}")
    positions = positions.to(torch.int64).contiguous()
    if should_check_cuda_values(slot_mapping):
        _check_slot_values(slot_mapping, k_cache.shape[0] * k_cache.shape[1], "slot_mapping", True)
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= cos_sin_cache.shape[0]):
            raise RuntimeError(f"positions must be in [0, {cos_sin_cache.shape[0]}) (rows of cos_sin_cache)")
    OPS.rope_append_paged_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox)
    return q


@torch.library.register_fake("leapdec::rope_append_paged_kv")
def _rope_append_paged_kv_fake(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping, is_neox):
    return None
