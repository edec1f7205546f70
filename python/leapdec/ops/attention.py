"""``paged_attention``: ragged queries over a paged KV cache (decode, prefill, trees, blocks)."""

from __future__ import annotations

import math

import torch

from leapdec.ops._lib import OPS, as_int32, should_check_cuda_values

# Split-KV partial results of the CUDA decode kernel live here (allocated once per device,
# so the op itself never allocates and can be captured in a CUDA graph).
WORKSPACE_BYTES = 64 * 1024 * 1024
_workspaces: dict = {}


def workspace_for(device: torch.device) -> torch.Tensor | None:
    """The per-device float workspace used by the CUDA split-KV path (None on CPU)."""
    if device.type != "cuda":
        return None
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
    ws = _workspaces.get(key)
    if ws is None:
        ws = torch.empty(WORKSPACE_BYTES // 4, dtype=torch.float32, device=device)
        _workspaces[key] = ws
    return ws


def _check_values_on_host(q, k_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len,
                          custom_mask, mask_indptr):
    num_pages, page_size = k_cache.shape[0], k_cache.shape[1]
    qo, kvp = qo_indptr.cpu(), kv_indptr.cpu()
    idx, last = kv_indices.cpu(), kv_last_page_len.cpu()
    if int(qo[0]) != 0 or int(kvp[0]) != 0:
        raise RuntimeError("qo_indptr[0] and kv_indptr[0] must be 0")
    if int(qo[-1]) != q.shape[0]:
        raise RuntimeError(f"qo_indptr[B] must equal the number of query rows {q.shape[0]}, got {int(qo[-1])}")
    used = idx[: int(kvp[-1])]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_pages):
        raise RuntimeError(f"kv_indices holds a page id out of range [0, {num_pages})")
    n_pages = kvp[1:] - kvp[:-1]
    qo_len = qo[1:] - qo[:-1]
    if bool(((last < 1) | (last > page_size))[n_pages > 0].any()):
        raise RuntimeError(f"kv_last_page_len must be in 1..page_size ({page_size})")
    kv_len = torch.where(n_pages > 0, page_size * (n_pages - 1) + last, torch.zeros_like(last))
    if bool((qo_len > kv_len).any()):
        raise RuntimeError("a request has qo_len > kv_len: queries must be the last qo_len positions "
                           "of their KV sequence (append first)")
    if mask_indptr is not None:
        mi = mask_indptr.cpu()
        if not torch.equal(mi[1:] - mi[:-1], qo_len * qo_len) or int(mi[0]) != 0:
            raise RuntimeError("mask_indptr must give each request qo_len^2 mask entries starting at 0")
        if int(mi[-1]) > custom_mask.numel():
            raise RuntimeError("mask_indptr[B] exceeds custom_mask's length")


def paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len,
                    mask_mode: str = "causal", custom_mask=None, mask_indptr=None,
                    sm_scale: float | None = None, return_lse: bool = False,
                    max_qo_len: int | None = None, max_kv_len: int | None = None):
    """Attention of ragged queries ``q [total_q, H_q, D]`` over a paged KV cache.

    Request b's queries are the last ``qo_len`` positions of its KV sequence (their K/V already
    appended). ``mask_mode``: ``"none"`` (bidirectional), ``"causal"``, or ``"custom"``: the
    whole prefix plus new positions j where ``custom_mask`` (each request's ``[qo_len, qo_len]``
    bool matrix row-major, concatenated at ``mask_indptr``) is true. ``max_qo_len`` /
    ``max_kv_len`` are optional host-side hints that let the CUDA kernels size their grid
    without a device sync (pass them when capturing a CUDA graph). Returns ``out`` (and the
    natural-log ``lse [total_q, H_q]`` float32 with ``return_lse``).
    """
    if mask_mode not in ("none", "causal", "custom"):
        raise ValueError(f"mask_mode must be one of 'none', 'causal', 'custom', got {mask_mode!r}")
    qo_indptr = as_int32(qo_indptr, "qo_indptr")
    kv_indptr = as_int32(kv_indptr, "kv_indptr")
    kv_indices = as_int32(kv_indices, "kv_indices")
    kv_last_page_len = as_int32(kv_last_page_len, "kv_last_page_len")
    if mask_mode == "custom":
        if custom_mask is None or mask_indptr is None:
            raise ValueError("mask_mode='custom' needs custom_mask and mask_indptr")
        if custom_mask.dtype != torch.bool:
            raise TypeError(f"custom_mask must be a bool tensor, got {custom_mask.dtype}")
        custom_mask = custom_mask.reshape(-1).contiguous()
        mask_indptr = as_int32(mask_indptr, "mask_indptr")
    else:
        custom_mask = mask_indptr = None
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(max(q.shape[-1], 1))   # D = 0 is rejected by the op
    if should_check_cuda_values(kv_indices):
        _check_values_on_host(q, k_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len,
                              custom_mask, mask_indptr)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if return_lse else None
    OPS.paged_attention(out, lse, q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices,
                        kv_last_page_len, mask_mode, custom_mask, mask_indptr, float(sm_scale),
                        -1 if max_qo_len is None else int(max_qo_len),
                        -1 if max_kv_len is None else int(max_kv_len), workspace_for(q.device))
    return (out, lse) if return_lse else out


@torch.library.register_fake("leapdec::paged_attention")
def _paged_attention_fake(out, lse, q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices,
                          kv_last_page_len, mask_mode, custom_mask, mask_indptr, sm_scale,
                          max_qo_len, max_kv_len, workspace):
    return None
