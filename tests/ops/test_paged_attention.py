"""``paged_attention`` against ``reference.paged_attention``: ragged batches, shuffled pages,
page sizes 1 and 16, head dims 64/128 (and odd ones), GQA and MHA, every mask mode, lse;
opcheck, torch.compile, and the errors bad input must raise."""

import math
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import paged_attention
from leapdec.ops._lib import OPS

from devices import TOLERANCES, dtypes_for

LSE_TOL = dict(atol=1e-4, rtol=1e-4)


def dtypes(device):
    """The contract's dtypes, plus float16 (supported, slower) on CPU."""
    return list(dict.fromkeys(dtypes_for(device) + [torch.float16]))


def random_tree_mask(n, gen):
    """Ancestor mask [n, n] of a random tree with node 0 as root (parent of i is < i)."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return mask


def make_inputs(qo_lens, prefix_lens, h_q, h_kv, d, page_size, dtype, device, gen,
                mask_mode="causal", mask_kind="tree"):
    """Random q and a paged cache whose pages are shuffled among spare ones; request b's
    KV sequence is ``prefix_lens[b] + qo_lens[b]`` long. Returns (args, kwargs) of the op."""
    kv_lens = [p + q for p, q in zip(prefix_lens, qo_lens)]
    n_pages = [math.ceil(n / page_size) for n in kv_lens]
    total_pages = sum(n_pages) + 5
    k_cache = torch.randn(total_pages, page_size, h_kv, d, generator=gen).to(dtype)
    v_cache = torch.randn(total_pages, page_size, h_kv, d, generator=gen).to(dtype)
    kv_indices = torch.randperm(total_pages, generator=gen)[: sum(n_pages)].to(torch.int32)
    kv_indptr = torch.tensor([0] + n_pages).cumsum(0).to(torch.int32)
    last = torch.tensor([n - (p - 1) * page_size if p else 1 for n, p in zip(kv_lens, n_pages)],
                        dtype=torch.int32)
    qo_indptr = torch.tensor([0] + list(qo_lens)).cumsum(0).to(torch.int32)
    q = torch.randn(sum(qo_lens), h_q, d, generator=gen).to(dtype)
    kwargs = dict(mask_mode=mask_mode)
    if mask_mode == "custom":
        if mask_kind == "tree":
            masks = [random_tree_mask(n, gen) for n in qo_lens]
        else:
            masks = [torch.rand(n, n, generator=gen) < 0.5 for n in qo_lens]
        kwargs["custom_mask"] = torch.cat([m.reshape(-1) for m in masks]).to(device)
        kwargs["mask_indptr"] = torch.tensor([0] + [n * n for n in qo_lens]).cumsum(0).to(
            torch.int32).to(device)
    args = [t.to(device) for t in (q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, last)]
    return args, kwargs


def check_against_reference(args, kwargs, sm_scale=None):
    dtype = args[0].dtype
    out, lse = paged_attention(*args, **kwargs, sm_scale=sm_scale, return_lse=True)
    cpu_kwargs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    want, want_lse = ref.paged_attention(*[a.cpu() for a in args], **cpu_kwargs,
                                         sm_scale=sm_scale, return_lse=True)
    assert out.dtype == dtype and out.shape == args[0].shape
    torch.testing.assert_close(out.cpu().float(), want.float(), **TOLERANCES[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, **LSE_TOL)
    return out, lse


@pytest.mark.parametrize("mask_mode,mask_kind", [("none", None), ("causal", None),
                                                 ("custom", "tree"), ("custom", "random")])
@pytest.mark.parametrize("h_q,h_kv", [(8, 2), (4, 4)])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("page_size", [1, 16])
def test_matches_reference(device, mask_mode, mask_kind, h_q, h_kv, d, page_size):
    """Ragged batch (qo_len 0, 1, 7, 33; prefixes 0..40) in shuffled pages."""
    seed = zlib.crc32(repr((mask_mode, mask_kind, h_q, d, page_size)).encode())
    for dtype in dtypes(device):
        gen = torch.Generator().manual_seed(seed)
        args, kwargs = make_inputs([0, 1, 7, 33, 1], [5, 0, 40, 3, 17], h_q, h_kv, d, page_size,
                                   dtype, device, gen, mask_mode, mask_kind)
        check_against_reference(args, kwargs)


@pytest.mark.parametrize("h_q,h_kv,d", [(6, 2, 40), (3, 1, 80), (5, 5, 16), (16, 1, 24)])
@pytest.mark.parametrize("mask_mode", ["none", "causal", "custom"])
def test_odd_groups_and_head_dims(device, h_q, h_kv, d, mask_mode):
    """Group sizes and head dims that leave partial vectors and partial row blocks."""
    for dtype in dtypes_for(device):
        gen = torch.Generator().manual_seed(h_q * 1000 + d)
        args, kwargs = make_inputs([2, 19, 5, 70], [1, 31, 64, 10], h_q, h_kv, d, 16, dtype,
                                   device, gen, mask_mode)
        check_against_reference(args, kwargs)


def test_sm_scale_and_multithreaded_batch(device):
    """An explicit sm_scale, and a batch big enough to be split across threads."""
    gen = torch.Generator().manual_seed(7)
    args, kwargs = make_inputs([64, 1, 48, 1, 17, 64], [200, 300, 0, 5, 90, 33], 8, 2, 64, 16,
                               torch.float32, device, gen, "causal")
    out, lse = check_against_reference(args, kwargs, sm_scale=0.3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, lse1 = paged_attention(*args, **kwargs, sm_scale=0.3, return_lse=True)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out1, out, atol=0, rtol=0)
    torch.testing.assert_close(lse1, lse, atol=0, rtol=0)


def test_query_that_sees_nothing(device):
    """A custom row with no true entry and no prefix: output 0 and lse -inf (not NaN)."""
    for dtype in dtypes_for(device):
        gen = torch.Generator().manual_seed(3)
        args, kwargs = make_inputs([3, 2], [0, 4], 4, 2, 64, 16, dtype, device, gen, "custom")
        mask = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool).reshape(-1)
        kwargs["custom_mask"] = torch.cat([mask, torch.zeros(4, dtype=torch.bool)]).to(device)
        out, lse = check_against_reference(args, kwargs)
        assert torch.all(out[1] == 0) and torch.all(lse[1] == -math.inf)
        assert torch.isfinite(lse[[0, 2, 3, 4]]).all()  # the second request still sees its prefix


def test_decode_matches_full_attention_row(device):
    """qo_len 1 over a long sequence equals the last row of a prefill of the same sequence."""
    gen = torch.Generator().manual_seed(11)
    args, kwargs = make_inputs([300], [0], 8, 2, 64, 16, torch.float32, device, gen, "causal")
    full = paged_attention(*args, **kwargs)
    q, k_cache, v_cache, _, kv_indptr, kv_indices, last = args
    qo_indptr = torch.tensor([0, 1], dtype=torch.int32, device=device)
    one = paged_attention(q[-1:].contiguous(), k_cache, v_cache, qo_indptr, kv_indptr,
                          kv_indices, last, mask_mode="causal")
    torch.testing.assert_close(one, full[-1:], **TOLERANCES[torch.float32])


def test_int64_indices_are_accepted(device):
    gen = torch.Generator().manual_seed(5)
    args, kwargs = make_inputs([1, 4], [9, 20], 4, 2, 64, 16, torch.float32, device, gen)
    want = paged_attention(*args, **kwargs)
    args64 = args[:3] + [a.long() for a in args[3:]]
    torch.testing.assert_close(paged_attention(*args64, **kwargs), want, atol=0, rtol=0)


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_isa_builds(isa):
    """The kernel is compiled for AVX-512, AVX2 and the baseline ISA and runs the widest the
    CPU has; LEAPDEC_CPU_ISA lowers it, so the other builds are checked here too."""
    here = Path(__file__).resolve().parent
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(here.parent)!r}, {str(here)!r}]
        import torch
        from test_paged_attention import check_against_reference, make_inputs
        for mode in ("none", "causal", "custom"):
            for h_q, h_kv, d in ((8, 2, 64), (3, 1, 40)):
                for dtype in (torch.float32, torch.bfloat16):
                    gen = torch.Generator().manual_seed(d)
                    args, kwargs = make_inputs([1, 7, 33, 0, 20], [40, 5, 3, 2, 70], h_q, h_kv, d,
                                               16, dtype, "cpu", gen, mode)
                    check_against_reference(args, kwargs)
    """)
    env = dict(os.environ, LEAPDEC_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def op_args(args, kwargs, with_lse=True):
    """Positional arguments of torch.ops.leapdec.paged_attention for wrapper-style inputs."""
    q = args[0]
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if with_lse else None
    return (out, lse, *args, kwargs["mask_mode"], kwargs.get("custom_mask"),
            kwargs.get("mask_indptr"), 1.0 / math.sqrt(q.shape[-1]), -1, -1, None)


@pytest.mark.parametrize("mask_mode", ["causal", "custom"])
def test_opcheck(mask_mode):
    gen = torch.Generator().manual_seed(1)
    args, kwargs = make_inputs([3, 1], [4, 9], 4, 2, 64, 16, torch.float32, "cpu", gen, mask_mode)
    torch.library.opcheck(OPS.paged_attention.default, op_args(args, kwargs))


def test_torch_compile():
    """The wrapper inside a compiled function: Dynamo and AOT tracing go through the fake
    impl (the aot_eager backend skips Inductor's C++ codegen, ~25 s on a small CPU)."""
    gen = torch.Generator().manual_seed(2)
    args, kwargs = make_inputs([4, 1], [6, 10], 4, 2, 64, 16, torch.float32, "cpu", gen, "causal")

    def attend(q, *rest):
        return paged_attention(q * 2.0, *rest, mask_mode="causal") + 1.0

    compiled = torch.compile(attend, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), attend(*args))


# ------------------------------------------------------------------------------- bad input

def good_inputs(device, dtype=torch.float32, mask_mode="causal"):
    gen = torch.Generator().manual_seed(9)
    return make_inputs([3, 1], [5, 20], 4, 2, 64, 16, dtype, device, gen, mask_mode)


def test_rejects_wrong_dtypes(device):
    args, kwargs = good_inputs(device)
    q = args[0]
    with pytest.raises(RuntimeError, match="q must have the cache dtype"):
        paged_attention(q.to(torch.bfloat16), *args[1:], **kwargs)
    with pytest.raises(RuntimeError, match="v_cache must have the dtype of k_cache"):
        paged_attention(q, args[1], args[2].to(torch.bfloat16), *args[3:], **kwargs)
    with pytest.raises(TypeError, match="kv_indices must be an int32"):
        paged_attention(*args[:5], args[5].float(), args[6], **kwargs)
    with pytest.raises(RuntimeError, match="k_cache must be float32, bfloat16 or float16"):
        paged_attention(q.double(), args[1].double(), args[2].double(), *args[3:], **kwargs)
    args, kwargs = good_inputs(device, mask_mode="custom")
    with pytest.raises(TypeError, match="custom_mask must be a bool tensor"):
        paged_attention(*args, **{**kwargs, "custom_mask": kwargs["custom_mask"].int()})


def test_rejects_wrong_shapes(device):
    args, kwargs = good_inputs(device)
    q, k_cache, v_cache = args[:3]
    with pytest.raises(RuntimeError, match="q must be 3-D"):
        paged_attention(q.reshape(q.shape[0], -1), *args[1:], **kwargs)
    with pytest.raises(RuntimeError, match="q head dim must equal the cache head dim"):
        paged_attention(q[..., :32].contiguous(), *args[1:], **kwargs)
    with pytest.raises(RuntimeError, match=r"q heads \(3\) must be a multiple of the KV heads \(2\)"):
        paged_attention(q[:, :3].contiguous(), *args[1:], **kwargs)
    with pytest.raises(RuntimeError, match="v_cache must have the shape of k_cache"):
        paged_attention(q, k_cache, v_cache[:-1].contiguous(), *args[3:], **kwargs)
    with pytest.raises(RuntimeError, match="k_cache must be 4-D"):
        paged_attention(q, k_cache[0], v_cache[0], *args[3:], **kwargs)
    with pytest.raises(RuntimeError, match="qo_indptr must have B\\+1"):
        paged_attention(*args[:3], args[3][:-1].contiguous(), *args[4:], **kwargs)


def test_rejects_non_contiguous(device):
    args, kwargs = good_inputs(device)
    q, k_cache = args[:2]
    q_strided = torch.empty(q.shape[1], q.shape[0], q.shape[2], device=device).transpose(0, 1)
    q_strided.copy_(q)
    with pytest.raises(RuntimeError, match="q must be contiguous"):
        paged_attention(q_strided, *args[1:], **kwargs)
    k_strided = torch.empty(k_cache.shape[0], k_cache.shape[2], k_cache.shape[1], k_cache.shape[3],
                            device=device).transpose(1, 2)
    k_strided.copy_(k_cache)
    with pytest.raises(RuntimeError, match="k_cache must be contiguous"):
        paged_attention(q, k_strided, *args[2:], **kwargs)


def test_rejects_wrong_device(device):
    if device.type != "cuda":
        pytest.skip("needs a second device type that reaches the kernel (CUDA)")
    args, kwargs = good_inputs(device)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        paged_attention(args[0].cpu(), *args[1:], **kwargs)


def test_rejects_bad_index_values(device):
    args, kwargs = good_inputs(device)
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, last = args
    bad = kv_indices.clone()
    bad[0] = k_cache.shape[0]
    with pytest.raises(RuntimeError, match="kv_indices.*out of range"):
        paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, bad, last, **kwargs)
    bad[0] = -1
    with pytest.raises(RuntimeError, match="kv_indices.*out of range"):
        paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, bad, last, **kwargs)
    bad_last = last.clone()
    bad_last[0] = k_cache.shape[1] + 1
    with pytest.raises(RuntimeError, match=r"kv_last_page_len.*must be in 1..page_size"):
        paged_attention(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, bad_last, **kwargs)
    with pytest.raises(RuntimeError, match=r"qo_indptr\[B\] must equal the number of query rows"):
        paged_attention(q[:-1].contiguous(), k_cache, v_cache, qo_indptr, kv_indptr, kv_indices,
                        last, **kwargs)


def test_rejects_more_queries_than_keys(device):
    gen = torch.Generator().manual_seed(4)
    args, kwargs = make_inputs([2, 5], [3, 0], 4, 2, 64, 16, torch.float32, device, gen)
    last = args[6].clone()
    last[1] = 3  # request 1 now has kv_len 3 < qo_len 5
    with pytest.raises(RuntimeError, match=r"qo_len.*> kv_len"):
        paged_attention(*args[:6], last, **kwargs)


def test_rejects_bad_mask_arguments(device):
    args, kwargs = good_inputs(device)
    with pytest.raises(ValueError, match="mask_mode must be one of 'none', 'causal', 'custom'"):
        paged_attention(*args, mask_mode="tree")
    with pytest.raises(RuntimeError, match="mask_mode must be one of 'none', 'causal', 'custom'"):
        OPS.paged_attention(*op_args(args, {**kwargs, "mask_mode": "bidirectional"}))
    with pytest.raises(ValueError, match="needs custom_mask and mask_indptr"):
        paged_attention(*args, mask_mode="custom")
    args, kwargs = good_inputs(device, mask_mode="custom")
    wrong = kwargs["mask_indptr"].clone()
    wrong[1] -= 1
    with pytest.raises(RuntimeError, match=r"mask_indptr.*qo_len\^2"):
        paged_attention(*args, **{**kwargs, "mask_indptr": wrong})
    with pytest.raises(RuntimeError, match="exceeds custom_mask's length"):
        paged_attention(*args, **{**kwargs, "custom_mask": kwargs["custom_mask"][:-1]})
