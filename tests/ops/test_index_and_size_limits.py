"""Index values that int32 cannot hold and zero-sized caches or head counts are errors that name
the argument, never a silent wrap-around (slot 2**32 + 5 writing slot 5) or a crash (SIGFPE on
H_kv = 0)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from leapdec.ops import (append_paged_kv, build_tree, move_kv_slots, paged_attention,
                         rope_append_paged_kv, unmask_and_filter, verify_tree_greedy)

BIG = 2**32


def test_append_rejects_int64_slot_that_would_wrap(device):
    k_cache = torch.zeros(2, 4, 1, 8, device=device)
    v_cache = torch.zeros_like(k_cache)
    rows = torch.ones(1, 1, 8, device=device)
    with pytest.raises(RuntimeError, match=r"slot_mapping holds 4294967301, outside the int32 range"):
        append_paged_kv(rows, rows, k_cache, v_cache, torch.tensor([BIG + 5], device=device))
    assert not k_cache.any(), "slot 5 must not have been written"
    with pytest.raises(RuntimeError, match="slot_mapping holds"):
        append_paged_kv(rows, rows, k_cache, v_cache, torch.tensor([-BIG + 1], device=device))


def test_move_rejects_int64_slots_that_would_wrap(device):
    k_cache = torch.randn(2, 4, 1, 8, device=device)
    v_cache = torch.randn_like(k_cache)
    before = k_cache.clone()
    with pytest.raises(RuntimeError, match="src_slots holds"):
        move_kv_slots(k_cache, v_cache, torch.tensor([BIG + 1], device=device), torch.tensor([0], device=device))
    with pytest.raises(RuntimeError, match="dst_slots holds"):
        move_kv_slots(k_cache, v_cache, torch.tensor([1], device=device), torch.tensor([BIG], device=device))
    assert torch.equal(k_cache, before)


def test_rope_append_rejects_int64_slot_that_would_wrap(device):
    k_cache = torch.zeros(2, 4, 1, 8, device=device)
    v_cache = torch.zeros_like(k_cache)
    q, k = torch.randn(1, 2, 8, device=device), torch.randn(1, 1, 8, device=device)
    cos_sin = torch.ones(16, 8, device=device)
    with pytest.raises(RuntimeError, match="slot_mapping holds"):
        rope_append_paged_kv(q, k, k.clone(), torch.tensor([0], device=device), cos_sin, k_cache, v_cache,
                             torch.tensor([BIG + 5], device=device))
    assert not k_cache.any()


def test_paged_attention_rejects_int64_indices_that_would_wrap(device):
    k_cache = torch.randn(2, 4, 1, 8, device=device)
    q = torch.randn(1, 1, 8, device=device)
    args = dict(qo_indptr=torch.tensor([0, 1]), kv_indptr=torch.tensor([0, 1]),
                kv_indices=torch.tensor([BIG]), kv_last_page_len=torch.tensor([1]))
    args = {n: t.to(device) for n, t in args.items()}
    with pytest.raises(RuntimeError, match="kv_indices holds 4294967296"):
        paged_attention(q, k_cache, k_cache, **args)


def test_tree_ops_reject_parent_that_would_wrap(device):
    parents = torch.tensor([[-1, 0, BIG - 2]], device=device)   # int32 wrap: -2, an absent node
    with pytest.raises(RuntimeError, match="parents holds 4294967294"):
        build_tree(parents)
    cand = torch.zeros(1, 3, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="parents holds"):
        verify_tree_greedy(cand, parents, cand)


def test_unmask_rejects_k_that_would_wrap(device):
    logits = torch.randn(1, 4, 10, device=device)
    tokens = torch.zeros(1, 4, dtype=torch.int64, device=device)
    masked = torch.ones(1, 4, dtype=torch.bool, device=device)
    with pytest.raises(RuntimeError, match="k holds 4294967297"):
        unmask_and_filter(logits, tokens, masked, "topk", k=torch.tensor([BIG + 1], device=device))
    with pytest.raises(RuntimeError, match="k = 4294967297 is outside the int32 range"):
        unmask_and_filter(logits, tokens, masked, "topk", k=BIG + 1)
    with pytest.raises(RuntimeError, match="block_end holds"):
        unmask_and_filter(logits, tokens, masked, "topk", k=1, block_end=torch.tensor([BIG + 4], device=device))
    assert masked.all(), "nothing may commit"


def test_int64_indices_in_range_still_work(device):
    k_cache = torch.zeros(2, 4, 1, 8, device=device)
    rows = torch.ones(1, 1, 8, device=device)
    append_paged_kv(rows, rows, k_cache, k_cache.clone(), torch.tensor([5], device=device))
    assert torch.equal(k_cache[1, 1], rows[0])


# ---------------------------------------------------------------- zero sizes (SIGFPE before)
def _run(code: str) -> subprocess.CompletedProcess:
    """Run in a child so that a SIGFPE fails this test instead of killing the test run."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("h_q,h_kv,page_size,d,message", [
    (2, 0, 4, 8, "H_kv"),
    (0, 1, 4, 8, "H_q > 0"),
    (2, 1, 0, 8, "page_size"),
    (0, 0, 4, 0, "H_kv"),
])
def test_paged_attention_rejects_zero_heads_and_page_size(h_q, h_kv, page_size, d, message):
    r = _run(f"""
        import torch
        from leapdec.ops import paged_attention
        k_cache = torch.zeros(2, {page_size}, {h_kv}, {d})
        q = torch.zeros(1, {h_q}, {d})
        i = lambda *v: torch.tensor(v, dtype=torch.int32)
        try:
            paged_attention(q, k_cache, k_cache.clone(), i(0, 1), i(0, 1), i(0), i(1))
        except RuntimeError as e:
            print("ERROR:", str(e).splitlines()[0])
        """)
    assert r.returncode == 0, f"crashed with exit code {r.returncode}: {r.stderr[-500:]}"
    assert "ERROR:" in r.stdout and message in r.stdout, r.stdout


def test_append_rejects_zero_sized_cache():
    k_cache = torch.zeros(2, 4, 0, 8)
    with pytest.raises(RuntimeError, match="H_kv"):
        append_paged_kv(torch.zeros(1, 0, 8), torch.zeros(1, 0, 8), k_cache, k_cache.clone(),
                        torch.tensor([0], dtype=torch.int32))
