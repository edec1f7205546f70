"""Paged KV cache writes: ``append_paged_kv`` and ``move_kv_slots``."""

from __future__ import annotations

import torch

from leapdec.ops._lib import OPS, as_int32, should_check_cuda_values


def _check_slot_values(slots: torch.Tensor, num_slots: int, name: str, allow_negative: bool) -> None:
    if slots.numel() == 0:
        return
    lo, hi = int(slots.min()), int(slots.max())
    if hi >= num_slots or (lo < 0 and not allow_negative):
        bad = slots[(slots >= num_slots) | ((slots < 0) & (not allow_negative))][0].item()
        raise RuntimeError(f"{name} holds slot {bad}, out of range [0, {num_slots}) (num_pages * page_size)")


def append_paged_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Write ``k, v [N, H_kv, D]`` into ``k_cache, v_cache [pages, page_size, H_kv, D]`` at
    ``slot_mapping [N]`` (slot = page*page_size+offset); rows with slot < 0 are skipped."""
    slot_mapping = as_int32(slot_mapping, "slot_mapping")
    if should_check_cuda_values(slot_mapping):
        _check_slot_values(slot_mapping, k_cache.shape[0] * k_cache.shape[1], "slot_mapping", True)
    OPS.append_paged_kv(k, v, k_cache, v_cache, slot_mapping)


def move_kv_slots(k_cache, v_cache, src_slots, dst_slots) -> None:
    """Copy cache rows ``src_slots[M] -> dst_slots[M]`` (all reads before any write)."""
    src_slots = as_int32(src_slots, "src_slots")
    dst_slots = as_int32(dst_slots, "dst_slots")
    if should_check_cuda_values(src_slots):
        n = k_cache.shape[0] * k_cache.shape[1]
        _check_slot_values(src_slots, n, "src_slots", False)
        _check_slot_values(dst_slots, n, "dst_slots", False)
    OPS.move_kv_slots(k_cache, v_cache, src_slots, dst_slots)


@torch.library.register_fake("leapdec::append_paged_kv")
def _append_paged_kv_fake(k, v, k_cache, v_cache, slot_mapping):
    return None


@torch.library.register_fake("leapdec::move_kv_slots")
def _move_kv_slots_fake(k_cache, v_cache, src_slots, dst_slots):
    return None
