"""Pure-PyTorch reference of every leapdec op: the readable spec and the test oracle.

Each function computes exactly what the compiled op of the same name computes, in float32
where precision matters, with no attention to speed. Index conventions follow FlashInfer:
``qo_indptr [B+1]``, ``kv_indptr [B+1]``, ``kv_indices [nnz_pages]``, ``kv_last_page_len [B]``
(1..page_size), all int32. A sequence's length is ``page_size*(n_pages-1)+last_page_len``;
a slot is ``page*page_size+offset``. The KV cache of a layer is ``k_cache, v_cache`` of shape
``[num_pages, page_size, H_kv, D]``.
"""

from __future__ import annotations

import math

import torch

MASK_MODES = ("none", "causal", "custom")


# --------------------------------------------------------------------------- paged KV cache

def append_paged_kv(k, v, k_cache, v_cache, slot_mapping):
    """Write rows ``k[i], v[i]`` ([N, H_kv, D]) into slot ``slot_mapping[i]``; slots < 0 are skipped."""
    page_size = k_cache.shape[1]
    for i, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // page_size, slot % page_size] = k[i]
        v_cache[slot // page_size, slot % page_size] = v[i]


def move_kv_slots(k_cache, v_cache, src_slots, dst_slots):
    """Copy cache rows ``src_slots[j] -> dst_slots[j]``; every read happens before any write."""
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    src = src_slots.long()
    dst = dst_slots.long()
    k_rows, v_rows = flat_k[src].clone(), flat_v[src].clone()
    flat_k[dst] = k_rows
    flat_v[dst] = v_rows


def gather_kv(k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, b):
    """Request b's K and V as contiguous ``[kv_len, H_kv, D]`` tensors (logical order)."""
    page_size = k_cache.shape[1]
    pages = kv_indices[kv_indptr[b]: kv_indptr[b + 1]].long()
    if pages.numel() == 0:
        empty = k_cache.new_zeros(0, *k_cache.shape[2:])
        return empty, empty.clone()
    kv_len = page_size * (pages.numel() - 1) + int(kv_last_page_len[b])
    k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:kv_len]
    v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:kv_len]
    return k, v


def attention_mask(qo_len, kv_len, mask_mode, tree_mask=None):
    """Bool ``[qo_len, kv_len]``: which KV positions each of the last qo_len queries sees.

    ``none``: everything. ``causal``: query i sees positions ``<= kv_len - qo_len + i``.
    ``custom``: the whole prefix ``< kv_len - qo_len`` plus new position j where ``tree_mask[i, j]``.
    """
    prefix = kv_len - qo_len
    if mask_mode == "none":
        return torch.ones(qo_len, kv_len, dtype=torch.bool)
    if mask_mode == "causal":
        rows = torch.arange(qo_len).unsqueeze(1)
        cols = torch.arange(kv_len).unsqueeze(0)
        return cols <= prefix + rows
    if mask_mode == "custom":
        mask = torch.zeros(qo_len, kv_len, dtype=torch.bool)
        mask[:, :prefix] = True
        mask[:, prefix:] = tree_mask.to(torch.bool).cpu()
        return mask
    raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")


def paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len,
                    mask_mode="causal", custom_mask=None, mask_indptr=None, sm_scale=None,
                    return_lse=False):
    """Attention of ragged queries ``q [total_q, H_q, D]`` over the paged cache.

    Request b's ``qo_len = qo_indptr[b+1]-qo_indptr[b]`` queries are the last qo_len positions
    of its KV sequence. GQA: query head h reads KV head ``h // (H_q // H_kv)``. Returns
    ``out [total_q, H_q, D]`` in q's dtype and, with ``return_lse``, the natural-log
    log-sum-exp of the scaled scores ``[total_q, H_q]`` (float32; -inf for a query that sees
    nothing, whose output row is 0).
    """
    total_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    out = torch.zeros(total_q, h_q, d, dtype=torch.float32, device=q.device)
    lse = torch.full((total_q, h_q), -math.inf, dtype=torch.float32, device=q.device)
    for b in range(kv_last_page_len.shape[0]):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        qo_len = q1 - q0
        if qo_len == 0:
            continue
        k, v = gather_kv(k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, b)
        kv_len = k.shape[0]
        tree = None
        if mask_mode == "custom":
            m0 = int(mask_indptr[b])
            tree = custom_mask[m0: m0 + qo_len * qo_len].view(qo_len, qo_len)
        mask = attention_mask(qo_len, kv_len, mask_mode, tree).to(q.device)
        qb = q[q0:q1].float().transpose(0, 1)                                  # [H_q, qo, D]
        kb = k.float().repeat_interleave(group, dim=1).transpose(0, 1)         # [H_q, kv, D]
        vb = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (qb @ kb.transpose(1, 2)) * scale                             # [H_q, qo, kv]
        scores = scores.masked_fill(~mask, -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)                              # [H_q, qo]
        probs = torch.exp(scores - row_lse.unsqueeze(-1)).nan_to_num(0.0)
        out[q0:q1] = (probs @ vb).transpose(0, 1)
        lse[q0:q1] = row_lse.transpose(0, 1)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def rope_cos_sin_cache(max_positions, rotary_dim, theta=10000.0, scaling=None, dtype=torch.float32):
    """``[max_positions, rotary_dim]``: cos of each (position, frequency) then sin (vLLM layout).

    ``scaling`` is a Hugging Face ``rope_scaling`` dict (``linear`` and ``llama3`` supported).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    pos = torch.arange(max_positions, dtype=torch.float64)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "linear":
            pos = pos / float(scaling["factor"])
        elif kind == "llama3":
            factor = float(scaling["factor"])
            low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
            old_ctx = float(scaling["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv_freq
            smooth = (old_ctx / wavelen - low) / (high - low)
            scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
            mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
            is_mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
            inv_freq = torch.where(is_mid, mid, scaled)
        elif kind not in (None, "default"):
            raise ValueError(f"unsupported rope_scaling type {kind!r}")
    freqs = torch.outer(pos, inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)


def apply_rope(x, positions, cos_sin_cache, is_neox=True):
    """Rotate the first ``rotary_dim`` dims of ``x [N, H, D]`` by RoPE at ``positions [N]``.

    ``is_neox``: rotate halves (Llama/Hugging Face ``rotate_half``); else interleaved pairs (GPT-J).
    """
    rot = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache[positions.long()].float().chunk(2, dim=-1)    # [N, rot/2]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.float()
    x_rot, x_pass = xf[..., :rot], xf[..., rot:]
    if is_neox:
        x1, x2 = x_rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, x_pass], dim=-1).to(x.dtype)


def rope_append_paged_kv(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping,
                         is_neox=True):
    """RoPE at logical ``positions`` on q (in place, returned) and k; write rotated k and v to the cache."""
    q.copy_(apply_rope(q, positions, cos_sin_cache, is_neox))
    append_paged_kv(apply_rope(k, positions, cos_sin_cache, is_neox), v, k_cache, v_cache, slot_mapping)
    return q
