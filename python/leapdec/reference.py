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

from leapdec.models.rope import rope_cos_sin_cache  # noqa: F401,E402

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


# The RoPE table is model code (leapdec.models.rope); the reference re-exports it for the tests.


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


# =========================================================================== tree speculative decoding
# build_tree, verify_tree_greedy, verify_tree_typical, verify_tree_sampling (leapdec/ops/tree.py).
# A tree batch is parents [B, T] int32: parents[b, 0] = -1 (node 0, the root, is the last
# accepted token), 0 <= parents[b, i] < i, or -2 for an absent (padding) node. The verify ops
# return accept_len [B] int32 (accepted nodes including the root = tokens gained this step),
# accept_index [B, T] int32 (accepted nodes from the root, -1 padded) and bonus [B] int64. These
# references expect valid trees (leapdec.ops.tree.check_tree_parents) and compute in float32 in
# the kernels' order, so they agree with the kernels up to float rounding.

TREE_ROOT_PARENT = -1
TREE_ABSENT_PARENT = -2
TYPICAL_ENTROPY_EPS = 1e-5  # Medusa's entropy: -sum p log(p + eps)


def linear(x, weight, bias=None):
    """``x [..., K] @ weight [N, K]^T (+ bias [N])``, computed in float32 and returned in x's
    dtype (the weight may be stored in another float dtype)."""
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def rms_norm(x, weight, eps=1e-6):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim: the sum in float32, the
    normalised row rounded to x's dtype, times the weight, returned in x's dtype."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (y.float() * weight.float()).to(x.dtype)


def fused_add_rms_norm(x, residual, weight, eps=1e-6):
    """``(rms_norm(r, weight, eps), r)`` with ``r = x + residual`` rounded to x's dtype: what the
    op leaves in ``x`` and ``residual``."""
    r = (x.float() + residual.float()).to(x.dtype)
    return rms_norm(r, weight, eps), r


def silu_and_mul(x):
    """SwiGLU's gate: ``silu(x[..., :D]) * x[..., D:]`` for ``x [..., 2D]``, each product rounded
    to x's dtype like Hugging Face's ``act_fn(gate) * up``."""
    gate, up = x.chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate.float()).to(x.dtype).float() * up.float()).to(x.dtype)


def tree_children(parents_row):
    """Children of every node of one tree (a list of parent ids), in index order."""
    children = [[] for _ in parents_row]
    for i, p in enumerate(parents_row):
        if i > 0 and p >= 0:
            children[p].append(i)
    return children


def build_tree(parents):
    """``mask [B, T, T]`` bool (``mask[b, i, j]``: j is i or an ancestor of i) and ``depth [B, T]``
    int32 (root 0); absent nodes have all-false rows and columns and depth -1."""
    batch, num_nodes = parents.shape
    mask = torch.zeros(batch, num_nodes, num_nodes, dtype=torch.bool)
    depth = torch.full((batch, num_nodes), -1, dtype=torch.int32)
    for b in range(batch):
        row = parents[b].tolist()
        for i in range(num_nodes):
            if i > 0 and row[i] == TREE_ABSENT_PARENT:
                continue
            node, d = i, 0
            mask[b, i, i] = True
            while node > 0:
                node, d = row[node], d + 1
                mask[b, i, node] = True
            depth[b, i] = d
    return mask.to(parents.device), depth.to(parents.device)


def _verify_outputs(parents, paths, bonus):
    batch, num_nodes = parents.shape
    accept_len = torch.tensor([len(p) for p in paths], dtype=torch.int32)
    accept_index = torch.full((batch, num_nodes), -1, dtype=torch.int32)
    for b, path in enumerate(paths):
        accept_index[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
    dev = parents.device
    return accept_len.to(dev), accept_index.to(dev), torch.tensor(bonus, dtype=torch.int64).to(dev)


def verify_tree_greedy(candidates, parents, target_tokens):
    """From the root, move to the first child c (in index order) of the current node u with
    ``candidates[b, c] == target_tokens[b, u]``; ``bonus = target_tokens[b, last node]``."""
    paths, bonus = [], []
    for b in range(parents.shape[0]):
        children = tree_children(parents[b].tolist())
        cand, target = candidates[b].tolist(), target_tokens[b].tolist()
        path = [0]
        while True:
            u = path[-1]
            nxt = next((c for c in children[u] if cand[c] == target[u]), None)
            if nxt is None:
                break
            path.append(nxt)
        paths.append(path)
        bonus.append(target[path[-1]])
    return _verify_outputs(parents, paths, bonus)


def typical_node_logprob(candidates, parents, target_logits, posterior_threshold=0.09,
                         posterior_alpha=0.3, temperature=1.0):
    """``[B, T]`` float32: ``log p(candidates[b, c] | parent)`` under
    ``p = softmax(target_logits[b, parent] / temperature)`` where node c passes Medusa's typical
    test ``p(x) > min(posterior_threshold, posterior_alpha * exp(-H(p)))``, -inf where it fails
    or is absent, 0 at the root."""
    z = target_logits.float() / temperature                             # [B, T, V]
    m = z.max(dim=-1, keepdim=True).values
    e = torch.exp(z - m)
    s = e.sum(dim=-1, keepdim=True)
    p = e / s
    entropy = -(p * torch.log(p + TYPICAL_ENTROPY_EPS)).sum(dim=-1)     # [B, T]
    logp = (z - m) - torch.log(s)                                       # log_softmax
    limit = torch.minimum(torch.full_like(entropy, posterior_threshold),
                          posterior_alpha * torch.exp(-entropy))        # [B, T], at each parent
    out = torch.full(parents.shape, -math.inf, dtype=torch.float32)
    out[:, 0] = 0.0
    for b in range(parents.shape[0]):
        for c in range(1, parents.shape[1]):
            u = int(parents[b, c])
            if u < 0:
                continue
            lp = logp[b, u, int(candidates[b, c])]
            if torch.exp(lp) > limit[b, u]:
                out[b, c] = lp
    return out.to(parents.device)


def verify_tree_typical(candidates, parents, target_logits, posterior_threshold=0.09,
                        posterior_alpha=0.3, temperature=1.0):
    """Medusa typical acceptance: the accepted path ends at the deepest node whose whole root
    path passes (``typical_node_logprob`` > -inf); ties go to the higher summed log-probability
    (summed root-down in float32), then the lower node index. ``bonus`` = argmax of the raw
    ``target_logits`` at the last accepted node."""
    node_lp = typical_node_logprob(candidates, parents, target_logits, posterior_threshold,
                                   posterior_alpha, temperature).cpu()
    paths, bonus = [], []
    for b in range(parents.shape[0]):
        row = parents[b].tolist()
        depth = [0] + [-1] * (len(row) - 1)
        score = torch.zeros(len(row), dtype=torch.float32)
        best = 0
        for c in range(1, len(row)):
            u = row[c]
            if u >= 0 and depth[u] >= 0 and node_lp[b, c] > -math.inf:
                depth[c] = depth[u] + 1
                score[c] = score[u] + node_lp[b, c]
                if depth[c] > depth[best] or (depth[c] == depth[best] and score[c] > score[best]):
                    best = c
        path = [best]
        while path[-1] != 0:
            path.append(row[path[-1]])
        paths.append(path[::-1])
        bonus.append(int(torch.argmax(target_logits[b, best].float())))
    return _verify_outputs(parents, paths, bonus)


def verify_tree_sampling(candidates, parents, draft_probs, target_probs, coins,
                         draft_rule="without_replacement"):
    """Lossless tree speculative sampling driven by ``coins [B, T]`` (uniform in [0, 1)).

    At node u, p = ``target_probs[b, u]`` (mass P) and q = ``draft_probs[b, u]`` (mass Q). Each
    child c (index order) with token x is accepted iff ``coins[b, c] * q(x) * P < p(x) * Q``
    (probability ``min(1, (p(x)/P) / (q(x)/Q))``); an accepted child becomes u. On rejection
    ``p <- max(0, p/P - q/Q)`` and by ``draft_rule``: ``iid`` keeps q; ``without_replacement``
    sets ``q(x) = 0`` (Q recomputed); ``deterministic`` uses q = one-hot(x), i.e. accepts with
    probability p(x)/P and sets ``p(x) = 0`` on rejection. If the residual has no mass left it
    falls back to the target row. When u has no more children, the bonus is the first token y
    with ``cumsum(p)[y] > coins[b, 0] * sum(p)`` (if rounding leaves none, the last y with
    p(y) > 0; token 0 if p has no mass).
    """
    deterministic = draft_rule == "deterministic"
    paths, bonus = [], []
    for b in range(parents.shape[0]):
        children = tree_children(parents[b].tolist())
        cand = candidates[b].tolist()
        coin = coins[b].float().cpu()
        path = [0]
        while True:
            u = path[-1]
            p = target_probs[b, u].float().cpu().clone()
            p_total = p.sum()
            if not deterministic:
                q = draft_probs[b, u].float().cpu().clone()
                q_total = q.sum()
            nxt = None
            for c in children[u]:
                x = cand[c]
                qx, qt = (1.0, 1.0) if deterministic else (q[x], q_total)
                if coin[c] * qx * p_total < p[x] * qt:
                    nxt = c
                    break
                if deterministic:
                    p[x] = 0.0
                else:
                    q_norm = q / q_total if q_total > 0 else torch.zeros_like(q)
                    p = torch.clamp(p / p_total - q_norm, min=0.0)
                    if draft_rule == "without_replacement":
                        q[x] = 0.0
                        q_total = q.sum()
                p_total = p.sum()
                if not p_total > 0:
                    p = target_probs[b, u].float().cpu().clone()
                    p_total = p.sum()
            if nxt is None:
                break
            path.append(nxt)
        paths.append(path)
        cdf = torch.cumsum(p, dim=0)
        hits = (cdf > coin[0] * p.sum()).nonzero()
        positive = (p > 0).nonzero()
        if hits.numel():
            bonus.append(int(hits[0, 0]))
        else:
            bonus.append(int(positive[-1, 0]) if positive.numel() else 0)
    return _verify_outputs(parents, paths, bonus)


# =========================================================================== diffusion decoding
# unmask_and_filter (LLaDA, Fast-dLLM, Learn2PD, ReDiff, WeDLM) and topological_reorder (WeDLM).
# Section owned by the diffusion ops (csrc/cpu/diffusion.cpp, csrc/cuda/diffusion.cu).

UNMASK_POLICIES = ("topk", "threshold", "factor", "learned", "entropy")
_U32 = 0xFFFFFFFF


def _mul32(x, c):
    """``(x * c) mod 2^32`` for int64 tensors x in [0, 2^32) and a 32-bit constant c (no overflow)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _U32


def _mix32(x):
    """Wellons' lowbias32 integer hash on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(seeds, seq_len, vocab):
    """The counter-based Gumbel noise ``g[b, l, v]`` (float32) of unmask_and_filter's sampling.

    A pure function of ``(seeds[b], l, v)`` (not of b), identical in the CPU and CUDA kernels:
    ``key = mix(mix(lo32(seed) ^ 0x9e3779b9) ^ hi32(seed))``, ``key_l = mix(key ^ (l * 0x85ebca6b))``,
    ``h = mix(key_l ^ (v * 0x9e3779b9))``, ``u = (2 * (h >> 9) + 1) * 2^-24``, ``g = -log(-log(u))``,
    with every product taken mod 2^32 and mix = lowbias32.
    """
    s = seeds.to(torch.int64).cpu()
    key = _mix32((s & _U32) ^ 0x9E3779B9)
    key = _mix32(key ^ ((s >> 32) & _U32))                                  # [B]
    pos = _mul32(torch.arange(seq_len, dtype=torch.int64), 0x85EBCA6B)
    key = _mix32(key[:, None] ^ pos[None, :])                               # [B, L]
    tok = _mul32(torch.arange(vocab, dtype=torch.int64), 0x9E3779B9)
    h = _mix32(key[:, :, None] ^ tok[None, None, :])                        # [B, L, V]
    u = ((h >> 9) * 2 + 1).to(torch.float32) * 5.9604644775390625e-08
    return -torch.log(-torch.log(u))


def _row_values(x, batch, fill, name):
    """An int, None or a [B] tensor as a list of B ints."""
    if x is None:
        return [fill] * batch
    if isinstance(x, int):
        return [x] * batch
    values = [int(v) for v in x.reshape(-1).tolist()]
    if len(values) != batch:
        raise ValueError(f"{name} must have one value per row ({batch}), got {len(values)}")
    return values


def revise_count(fraction, eligible):
    """ReDiff: how many of the eligible revisions apply: ceil(fraction * eligible) (1e-6 slack)."""
    if fraction >= 1.0:
        return eligible
    if not fraction > 0.0:
        return 0
    return max(0, min(eligible, math.ceil(fraction * eligible - 1e-6)))


def unmask_and_filter(logits, tokens, masked, policy="topk", k=None, block_start=None, block_end=None,
                      threshold=0.9, factor=1.0, position_penalty=0.02, filter_weights=None,
                      accept_threshold=0.96, temperature=0.0, seeds=None, eos_id=-1, pad_id=None,
                      eotp=False, eot_threshold=0.0, revise=False, revise_topk=1.0):
    """One diffusion-LM decoding step on ``logits [B, L, V]``; updates ``tokens [B, L]`` and
    ``masked [B, L]`` (bool) in place. Returns ``committed [B]`` (int32), ``confidence [B, L]``
    (float32), ``eot_pos [B]`` (int32), ``predicted [B, L]`` (int32), ``entropy [B, L]`` (float32).

    Per row b, window ``[block_start[b], block_end[b])`` (default the whole row):

    1. Processed positions: every window position, and with ``eotp`` every masked position after
       the window. For each: ``predicted`` = argmax of the logits, or with ``temperature > 0``
       argmax of ``logits + temperature * gumbel_noise(seeds)`` (float32; first index on ties);
       ``confidence`` = softmax(logits)[predicted] (no temperature); ``entropy`` = -sum p log p
       (nats). Other positions: predicted -1, confidence -inf, entropy +inf. Logits with NaN or
       +inf, or with no finite value, at a processed position are an error (-inf is fine).
    2. Candidates: masked window positions, ranked by priority (confidence; for ``entropy``:
       -(entropy + position_penalty * (l - first masked index of the window)), in float32),
       best first, ties to the lower index. The policy commits the first n ranks:
         ``topk``: n = k[b] (LLaDA; the caller computes the per-step transfer counts);
         ``threshold``: every candidate with confidence >= threshold (Fast-dLLM, tau);
         ``factor``: the largest n with conf_(n) >= 1 - factor / (n + 1) (Fast-dLLM);
         ``entropy``: every candidate with score < threshold (WeDLM);
         ``learned``: n = k[b] (default 1) UNION the masked window positions the filter accepts
         (Learn2PD): x [F] = the window's confidences (masked or not; 1.0 past the window's
         end; the window must fit in F), h = relu(w1 x + b1), accept where
         sigmoid(w2 h + b2) > accept_threshold (tested as logit > log(t / (1 - t))).
       n is clamped to [1, #candidates]: one token commits while any candidate remains.
       A commit writes ``tokens = predicted`` and ``masked = False``.
    3. ``revise`` (ReDiff): a window position already unmasked at entry, not holding pad_id,
       whose prediction differs from its token and is more probable than it
       (logit[predicted] > logit[token]; a token outside the vocabulary always qualifies) is
       eligible; the ``revise_count(revise_topk, #eligible)`` most confident are rewritten.
    4. ``eotp`` (End-of-Text Prediction, needs eos_id >= 0): if a committed token is EOS, e =
       the first such position; else e = the most confident (then lowest) position l >=
       block_start that is still masked, predicts EOS and has confidence >= eot_threshold.
       Every position after e becomes ``pad_id`` (default eos_id) and unmasked; eot_pos = e
       (-1 when none). Positions <= e are never changed by this step.
    ``committed[b]`` counts the positions the policy committed (before any truncation).
    """
    if policy not in UNMASK_POLICIES:
        raise ValueError(f"policy must be one of {UNMASK_POLICIES}, got {policy!r}")
    B, L, V = logits.shape
    pad = eos_id if pad_id is None else pad_id
    x = logits.detach().float().cpu()
    starts = _row_values(block_start, B, 0, "block_start")
    ends = _row_values(block_end, B, L, "block_end")
    ks = _row_values(k, B, 1, "k")
    m_entry = masked.detach().cpu().clone()
    tok_cpu = tokens.detach().cpu().clone()

    noise = None
    if temperature > 0:
        if seeds is None:
            raise ValueError("temperature > 0 needs seeds")
        seeds_t = torch.as_tensor(seeds, dtype=torch.int64).reshape(-1).expand(B)
        noise = gumbel_noise(seeds_t, L, V)

    predicted = torch.full((B, L), -1, dtype=torch.int32)
    confidence = torch.full((B, L), -math.inf, dtype=torch.float32)
    entropy = torch.full((B, L), math.inf, dtype=torch.float32)
    for b in range(B):
        s, e = starts[b], ends[b]
        if not 0 <= s <= e <= L:
            raise ValueError(f"row {b}: the window must satisfy 0 <= start <= end <= L, got [{s}, {e})")
        for l in range(L):
            if not (s <= l < e or (eotp and l >= e and bool(m_entry[b, l]))):
                continue
            row = x[b, l]
            if bool(torch.isnan(row).any()) or bool((row == math.inf).any()):
                raise ValueError(f"logits[{b}, {l}] contains NaN or +inf")
            if not bool((row > -math.inf).any()):
                raise ValueError(f"logits[{b}, {l}] has no finite value")
            score = row if noise is None else row + temperature * noise[b, l]
            pred = int(torch.argmax(score))
            p = torch.softmax(row, dim=-1)
            predicted[b, l] = pred
            confidence[b, l] = p[pred]
            entropy[b, l] = -torch.special.xlogy(p, p).sum()

    committed = torch.zeros(B, dtype=torch.int32)
    eot_pos = torch.full((B,), -1, dtype=torch.int32)
    for b in range(B):
        s, e = starts[b], ends[b]
        window = range(s, e)
        masked_entry = [bool(m_entry[b, l]) for l in range(L)]
        first = next((l for l in window if masked_entry[l]), L)
        conf = [float(c) for c in confidence[b].tolist()]

        def priority(l):
            if policy == "entropy":
                score = entropy[b, l] + position_penalty * torch.tensor(float(l - first))
                return -float(score) + 0.0
            return conf[l] + 0.0

        cands = sorted((l for l in window if masked_entry[l]), key=lambda l: (-priority(l), l))
        nc = len(cands)
        if policy in ("topk", "learned"):
            n = ks[b]
        elif policy == "threshold":
            n = sum(conf[l] >= threshold for l in cands)
        elif policy == "factor":
            n = sum(conf[l] >= 1.0 - factor / (r + 2) for r, l in enumerate(cands))
        else:
            n = sum(-priority(l) < threshold for l in cands)
        n = 0 if nc == 0 else min(max(n, 1), nc)
        take = set(cands[:n])
        if policy == "learned":
            w1, b1, w2, b2 = (t.detach().float().cpu() for t in filter_weights)
            F = w1.shape[1]
            if e - s > F:
                raise ValueError(f"row {b}: window of {e - s} positions exceeds the filter input F = {F}")
            xin = torch.ones(F, dtype=torch.float32)
            xin[: e - s] = confidence[b, s:e]
            out = w2 @ torch.relu(w1 @ xin + b1) + b2
            if accept_threshold >= 1.0:
                cut = math.inf
            elif accept_threshold <= 0.0:
                cut = -math.inf
            else:
                cut = math.log(accept_threshold / (1.0 - accept_threshold))
            take |= {s + j for j in range(e - s) if masked_entry[s + j] and float(out[j]) > cut}
        for l in take:
            tokens[b, l] = int(predicted[b, l])
            masked[b, l] = False
        committed[b] = len(take)

        if revise:
            eligible = []
            for l in window:
                tok, pred = int(tok_cpu[b, l]), int(predicted[b, l])
                if masked_entry[l] or tok == pad or tok == pred:
                    continue
                if 0 <= tok < V and not float(x[b, l, pred]) > float(x[b, l, tok]):
                    continue
                eligible.append(l)
            eligible.sort(key=lambda l: (-(conf[l] + 0.0), l))
            for l in eligible[: revise_count(revise_topk, len(eligible))]:
                tokens[b, l] = int(predicted[b, l])

        if eotp and eos_id >= 0:
            eos_commits = [l for l in take if int(predicted[b, l]) == eos_id]
            cut_at = min(eos_commits) if eos_commits else -1
            if cut_at < 0:
                late = [l for l in range(s, L) if masked_entry[l] and l not in take
                        and int(predicted[b, l]) == eos_id and conf[l] >= eot_threshold]
                if late:
                    cut_at = min(late, key=lambda l: (-conf[l], l))
            if cut_at >= 0:
                tokens[b, cut_at + 1:] = pad
                masked[b, cut_at + 1:] = False
            eot_pos[b] = cut_at
    dev = logits.device
    return (committed.to(dev), confidence.to(dev), eot_pos.to(dev), predicted.to(dev), entropy.to(dev))


def topological_reorder(tokens, masked, positions):
    """WeDLM window reorder of ``tokens, masked, positions [B, W]``: per row a stable partition,
    observed (unmasked) tokens first, masked after, each group in logical order. Returns
    ``tokens_out, positions_out`` (gathered; positions stay logical), ``perm [B, W]`` int32
    (perm[b][i] = logical index of the token at physical slot i) and its inverse ``inv_perm``."""
    B, W = tokens.shape
    perm = torch.empty(B, W, dtype=torch.int64)
    for b in range(B):
        m = masked[b].cpu().tolist()
        perm[b] = torch.tensor([i for i in range(W) if not m[i]] + [i for i in range(W) if m[i]],
                               dtype=torch.int64)
    inv_perm = torch.argsort(perm, dim=1)
    dev = tokens.device
    perm_d = perm.to(dev)
    return (torch.gather(tokens, 1, perm_d), torch.gather(positions, 1, perm_d),
            perm.to(torch.int32).to(dev), inv_perm.to(torch.int32).to(dev))


# --------------------------------------------------------------------------- CTC prefix scoring (AVSR)

CTC_LOG_ZERO = -1e10  # ESPnet's finite log-zero


def ctc_prefix_score(log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt, cand, blank, eos):
    """One step of CTC prefix scoring (ESPnet CTCPrefixScoreTH, Watanabe et al. 2017 Alg. 2).

    Hypothesis n (``prefix_len[n]`` tokens, last ``last_token[n]``) of utterance ``hyp_utt[n]``
    (frames ``t < frame_lens[b]`` of ``log_probs [B, T, V]``) has forward variables ``r_prev [T, 2,
    N]`` (``0``: the alignment ends in a label at frame t, ``1``: in a blank). Extending it by
    ``c = cand[n, j]``: ``phi = r_prev[:, 1]`` when c repeats the last label (a blank must separate
    them), else ``logaddexp`` of both rows; ``start = max(prefix_len, 1)``;
    ``r[t,0] = logaddexp(r[t-1,0], phi[t-1]) + x[t,c]``, ``r[t,1] = logaddexp(r[t-1,0], r[t-1,1]) +
    x[t,blank]`` for ``start <= t < len``; log-zero before start (``r[0,0] = x[0,c]`` for an empty
    prefix); past the end ``r[t,0]`` is log-zero and ``r[t,1] = logaddexp(r[t-1,0], r[t-1,1])``.
    ``psi = logsumexp(r[start-1,0], phi[t-1] + x[t,c] for start <= t < len)``; a candidate equal
    to ``eos`` gets the end score ``logaddexp(r_prev[len-1,0], r_prev[len-1,1])``, ``blank`` and
    ``-1`` (padding; its r too) get log-zero. Returns ``r [T, 2, N, C]``, ``psi [N, C]`` float32."""
    lp = log_probs.float()
    T = lp.shape[1]
    N, C = cand.shape
    dev = lp.device
    utt = hyp_utt.long()
    lens = frame_lens.long()[utt]                                          # [N]
    plen = prefix_len.long()
    cand = cand.long()
    col = cand.clamp(min=0)
    x = torch.gather(lp[utt], 2, col[:, None, :].expand(N, T, C)).permute(1, 0, 2)   # [T, N, C]
    xb = lp[utt, :, blank].t()[:, :, None]                                 # [T, N, 1]
    repeat = (plen > 0)[:, None] & (cand == last_token.long()[:, None])    # [N, C]
    r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])                    # [T, N]
    phi = torch.where(repeat[None], r_prev[:, 1, :, None], r_sum[:, :, None])  # [T, N, C]
    start = plen.clamp(min=1)
    zero = torch.full((N, C), CTC_LOG_ZERO, device=dev)
    r = torch.full((T, 2, N, C), CTC_LOG_ZERO, device=dev)
    r[0, 0] = torch.where((plen == 0)[:, None], x[0], zero)
    psi = zero.clone()
    for t in range(1, T):
        active = (t >= start)[:, None]
        inside = active & (t < lens)[:, None]
        past = active & (t >= lens)[:, None]
        psi = torch.where((t == start)[:, None], r[t - 1, 0], psi)
        total_prev = torch.logaddexp(r[t - 1, 0], r[t - 1, 1])
        new_n = torch.logaddexp(r[t - 1, 0], phi[t - 1]) + x[t]
        new_b = total_prev + xb[t]
        psi = torch.where(inside, torch.logaddexp(psi, phi[t - 1] + x[t]), psi)
        r[t, 0] = torch.where(inside, new_n, zero)
        r[t, 1] = torch.where(inside, new_b, torch.where(past, total_prev, zero))
    psi = torch.where((start >= T)[:, None], r[T - 1, 0], psi)
    end_score = r_sum[lens - 1, torch.arange(N, device=dev)]               # [N]
    psi = torch.where(cand == eos, end_score[:, None].expand(N, C), psi)
    psi = torch.where(cand == blank, zero, psi)
    pad = cand < 0
    psi = torch.where(pad, zero, psi)
    r = r.masked_fill(pad[None, None], CTC_LOG_ZERO)
    return r, psi
