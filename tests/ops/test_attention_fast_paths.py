"""The shapes that select each internal path of ``paged_attention`` and the cache writes.

On CUDA: the split-KV decode kernel (long sequences, GQA groups 1/4/7, a custom 1x1 mask that
hides the query's own position), the tensor-core multi-query kernel (several query tiles, KV
splits, tree / causal / bidirectional masks, a row that sees nothing), the fp32 CUDA-core
kernel, host length hints (exact, over- and under-estimated), CUDA-graph capture, and the
kernels skipping out-of-range indices. On CPU the same cases check the CPU kernels.
"""

import math

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import append_paged_kv, move_kv_slots, paged_attention, rope_append_paged_kv
from leapdec.ops import set_index_checks

from devices import TOLERANCES, dtypes_for

LSE_TOL = dict(atol=2e-3, rtol=2e-3)


def paged_cache(kv_lens, h_kv, d, page_size, dtype, device, gen, spare_pages=3):
    """Random K/V for requests of kv_lens, in shuffled pages (plus unused spare pages)."""
    n_pages = [math.ceil(n / page_size) for n in kv_lens]
    total = sum(n_pages) + spare_pages
    k_cache = torch.randn(total, page_size, h_kv, d, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(total, page_size, h_kv, d, generator=gen).to(dtype).to(device)
    perm = torch.randperm(total, generator=gen)[: sum(n_pages)]
    kv_indptr = torch.tensor([0] + n_pages).cumsum(0).to(torch.int32)
    last = [n - (p - 1) * page_size if p else 1 for n, p in zip(kv_lens, n_pages)]
    return (k_cache, v_cache, kv_indptr.to(device), perm.to(torch.int32).to(device),
            torch.tensor(last, dtype=torch.int32, device=device))


def tree_mask(qo_len, gen):
    """Ancestor mask of a random tree (node i's parent < i), flattened row-major."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, qo_len)]
    mask = torch.zeros(qo_len, qo_len, dtype=torch.bool)
    for i in range(qo_len):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask.reshape(-1)


def run_case(device, dtype, qo_lens, kv_lens, h_q, h_kv, d, page_size, mask_mode, seed,
             hints=None, custom=None):
    gen = torch.Generator().manual_seed(seed)
    k_cache, v_cache, kv_indptr, kv_indices, last = paged_cache(kv_lens, h_kv, d, page_size, dtype,
                                                                device, gen)
    qo_indptr = torch.tensor([0] + list(qo_lens)).cumsum(0).to(torch.int32).to(device)
    q = torch.randn(sum(qo_lens), h_q, d, generator=gen).to(dtype).to(device)
    custom_mask = mask_indptr = None
    if mask_mode == "custom":
        masks = custom if custom is not None else [tree_mask(n, gen) for n in qo_lens]
        custom_mask = torch.cat(masks).to(device)
        mask_indptr = torch.tensor([0] + [n * n for n in qo_lens]).cumsum(0).to(torch.int32).to(device)
    args = (q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, last)
    kwargs = dict(mask_mode=mask_mode, custom_mask=custom_mask, mask_indptr=mask_indptr)
    out, lse = paged_attention(*args, **kwargs, return_lse=True, **(hints or {}))
    want, want_lse = ref.paged_attention(*[a.cpu() for a in args],
                                         mask_mode=mask_mode,
                                         custom_mask=None if custom_mask is None else custom_mask.cpu(),
                                         mask_indptr=None if mask_indptr is None else mask_indptr.cpu(),
                                         return_lse=True)
    torch.testing.assert_close(out.cpu().float(), want.float(), **TOLERANCES[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, **LSE_TOL)
    return out, lse


@pytest.mark.parametrize("h_q,h_kv", [(4, 4), (8, 2), (7, 1)])
@pytest.mark.parametrize("d", [64, 128])
def test_decode_long_sequences(device, h_q, h_kv, d):
    """qo_len 1 everywhere: long and short sequences (KV splits), GQA groups 1, 4 and 7."""
    for dtype in dtypes_for(device):
        run_case(device, dtype, qo_lens=[1, 1, 0, 1], kv_lens=[1, 1500, 7, 613], h_q=h_q,
                 h_kv=h_kv, d=d, page_size=16, mask_mode="causal", seed=h_q * d)


def test_decode_custom_mask_hides_own_position(device):
    """A 1x1 custom mask entry of False hides the query's own position; with kv_len 1 the row
    sees nothing (zeros, lse -inf)."""
    masks = [torch.tensor([False]), torch.tensor([True]), torch.tensor([False])]
    for dtype in dtypes_for(device):
        out, lse = run_case(device, dtype, qo_lens=[1, 1, 1], kv_lens=[1, 900, 900], h_q=4, h_kv=2,
                            d=64, page_size=8, mask_mode="custom", seed=3, custom=masks)
        assert torch.all(out[0] == 0) and torch.all(torch.isneginf(lse[0]))


@pytest.mark.parametrize("mask_mode", ["causal", "none", "custom"])
@pytest.mark.parametrize("h_q,h_kv,d", [(4, 4, 128), (8, 2, 64), (7, 1, 64)])
def test_multi_query_tiles_and_splits(device, mask_mode, h_q, h_kv, d):
    """Ragged multi-query batches: several query tiles per request, a long prefix (KV splits),
    a one-query request beside tree/block requests, page size 1 and 16."""
    for i, dtype in enumerate(dtypes_for(device)):
        page_size = 16 if i % 2 == 0 else 1
        run_case(device, dtype, qo_lens=[37, 1, 70, 5], kv_lens=[37, 300, 1100, 133], h_q=h_q,
                 h_kv=h_kv, d=d, page_size=page_size, mask_mode=mask_mode, seed=11 + i)


def test_row_that_sees_nothing(device):
    """Custom mask, no prefix, a node whose row is all False: output 0 and lse -inf."""
    n = 6
    mask = torch.eye(n, dtype=torch.bool)
    mask[3, 3] = False
    for dtype in dtypes_for(device):
        out, lse = run_case(device, dtype, qo_lens=[n], kv_lens=[n], h_q=2, h_kv=2, d=64,
                            page_size=4, mask_mode="custom", seed=5, custom=[mask.reshape(-1)])
        assert torch.all(out[3] == 0) and torch.all(torch.isneginf(lse[3]))


@pytest.mark.parametrize("qo_lens,kv_lens", [([1, 1, 1], [1200, 5, 700]), ([64, 3], [2100, 40])])
def test_length_hints(device, qo_lens, kv_lens):
    """Exact, over-estimated and under-estimated max_kv_len hints give the same attention
    (the hint only sizes the grid: the last KV split always runs to the end)."""
    max_qo, max_kv = max(qo_lens), max(kv_lens)
    dtype = dtypes_for(device)[0]
    for hint_kv in (max_kv, 3 * max_kv, max_kv // 4):
        run_case(device, dtype, qo_lens, kv_lens, h_q=4, h_kv=2, d=128, page_size=16,
                 mask_mode="causal", seed=7, hints=dict(max_qo_len=max_qo, max_kv_len=hint_kv))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("qo_lens,kv_lens,mask_mode", [([1, 1], [900, 3000], "causal"),
                                                       ([20, 64], [20, 2000], "custom")])
def test_cuda_graph_capture(qo_lens, kv_lens, mask_mode):
    """With host hints the op launches no sync and allocates nothing: it captures and replays."""
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16
    k_cache, v_cache, kv_indptr, kv_indices, last = paged_cache(kv_lens, 2, 128, 16, dtype, device, gen)
    qo_indptr = torch.tensor([0] + qo_lens).cumsum(0).to(torch.int32).to(device)
    q = torch.randn(sum(qo_lens), 8, 128, generator=gen).to(dtype).to(device)
    custom_mask = mask_indptr = None
    if mask_mode == "custom":
        custom_mask = torch.cat([tree_mask(n, gen) for n in qo_lens]).to(device)
        mask_indptr = torch.tensor([0] + [n * n for n in qo_lens]).cumsum(0).to(torch.int32).to(device)
    kwargs = dict(mask_mode=mask_mode, custom_mask=custom_mask, mask_indptr=mask_indptr,
                  max_qo_len=max(qo_lens), max_kv_len=max(kv_lens), return_lse=True)
    args = (k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, last)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        paged_attention(q, *args, **kwargs)  # warm up (workspace, kernel attributes)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = paged_attention(q, *args, **kwargs)
    q.copy_(torch.randn(q.shape, generator=gen).to(dtype).to(device))
    graph.replay()
    torch.cuda.synchronize()
    want, want_lse = ref.paged_attention(q.cpu(), *[a.cpu() for a in args],
                                         mask_mode=mask_mode,
                                         custom_mask=None if custom_mask is None else custom_mask.cpu(),
                                         mask_indptr=None if mask_indptr is None else mask_indptr.cpu(),
                                         return_lse=True)
    torch.testing.assert_close(out.cpu().float(), want.float(), **TOLERANCES[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, **LSE_TOL)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_skip_out_of_range_indices():
    """With the host checks off, out-of-range slots and page ids are skipped, never written."""
    device = torch.device("cuda")
    # Each cache is the head of a larger buffer, so a write past its end would hit the guard.
    k_buf = torch.full((12, 4, 2, 64), 7.0, dtype=torch.float16, device=device)
    v_buf = torch.full_like(k_buf, 7.0)
    k_buf[:4] = 0
    v_buf[:4] = 0
    k_cache, v_cache = k_buf[:4], v_buf[:4]
    k = torch.ones(3, 2, 64, dtype=torch.float16, device=device)
    set_index_checks(False)
    try:
        append_paged_kv(k, k, k_cache, v_cache, torch.tensor([1, 16, 1 << 30], device=device))
        move_kv_slots(k_cache, v_cache, torch.tensor([1, 99], device=device),
                      torch.tensor([2, 3], device=device))
        q = torch.randn(1, 2, 64, dtype=torch.float16, device=device)
        out = paged_attention(q, k_cache, v_cache, torch.tensor([0, 1], device=device),
                              torch.tensor([0, 2], device=device), torch.tensor([0, 1000], device=device),
                              torch.tensor([4], device=device), mask_mode="causal")
        torch.cuda.synchronize()
    finally:
        set_index_checks(True)
    flat = k_cache.view(16, 2, 64)
    assert torch.all(flat[1] == 1) and torch.all(flat[2] == 1)
    assert torch.all(flat[[0, 3]] == 0) and torch.all(flat[4:] == 0)
    assert torch.all(k_buf[4:] == 7.0) and torch.all(v_buf[4:] == 7.0)
    assert torch.isfinite(out).all()


def test_move_overlapping_and_many_slots(device):
    """Sources that are also destinations read the old rows (a shift and a swap), and a move of
    more rows than one CTA's shared-memory slice per unit of 16 bytes."""
    for dtype in dtypes_for(device):
        k_cache = torch.randn(300, 16, 2, 64).to(dtype).to(device)
        v_cache = torch.randn(300, 16, 2, 64).to(dtype).to(device)
        n = k_cache.shape[0] * k_cache.shape[1]
        cases = [(torch.arange(1, 41), torch.arange(0, 40)),           # shift left by one
                 (torch.tensor([5, 9]), torch.tensor([9, 5])),          # swap
                 (torch.arange(0, 4000), torch.arange(n - 4000, n))]    # many rows, overlapping
        for src, dst in cases:
            want_k, want_v = k_cache.cpu().clone(), v_cache.cpu().clone()
            ref.move_kv_slots(want_k, want_v, src, dst)
            move_kv_slots(k_cache, v_cache, src.to(torch.int32).to(device), dst.to(torch.int32).to(device))
            assert torch.equal(k_cache.cpu(), want_k) and torch.equal(v_cache.cpu(), want_v)


@pytest.mark.parametrize("is_neox,rot", [(True, 64), (False, 64), (True, 32)])
def test_rope_append_partial_and_interleaved(device, is_neox, rot):
    """RoPE on q (in place) and k with NeoX / GPT-J pairs and a partial rotary dim; float32 and
    q-dtype cos/sin tables; a skipped slot still rotates q."""
    gen = torch.Generator().manual_seed(1)
    for dtype in dtypes_for(device):
        for cs_dtype in {torch.float32, dtype}:
            n, h_q, h_kv, d = 5, 4, 2, 64
            q = torch.randn(n, h_q, d, generator=gen).to(dtype).to(device)
            k = torch.randn(n, h_kv, d, generator=gen).to(dtype).to(device)
            v = torch.randn(n, h_kv, d, generator=gen).to(dtype).to(device)
            cos_sin = ref.rope_cos_sin_cache(64, rot, dtype=cs_dtype).to(device)
            positions = torch.tensor([3, 0, 63, 17, 17], device=device)
            slots = torch.tensor([4, 0, -1, 9, 2], device=device)
            k_cache = torch.zeros(4, 4, h_kv, d, dtype=dtype, device=device)
            v_cache = torch.zeros_like(k_cache)
            want_q, want_k, want_v = q.cpu().clone(), k_cache.cpu().clone(), v_cache.cpu().clone()
            ref.rope_append_paged_kv(want_q, k.cpu(), v.cpu(), positions.cpu(), cos_sin.cpu(), want_k,
                                     want_v, slots.cpu(), is_neox)
            rope_append_paged_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots, is_neox)
            torch.testing.assert_close(q.cpu(), want_q, **TOLERANCES[dtype])
            torch.testing.assert_close(k_cache.cpu(), want_k, **TOLERANCES[dtype])
            assert torch.equal(v_cache.cpu(), want_v)
