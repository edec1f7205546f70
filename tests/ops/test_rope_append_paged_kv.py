"""``rope_append_paged_kv`` against ``reference.rope_append_paged_kv``: NeoX and interleaved
RoPE, full and partial rotary dims, cos/sin in float32 or the model dtype, positions in any
order, skipped slots; opcheck, torch.compile, and the errors bad input must raise."""

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import rope_append_paged_kv
from leapdec.ops._lib import OPS

from devices import TOLERANCES, dtypes_for


def dtypes(device):
    return list(dict.fromkeys(dtypes_for(device) + [torch.float16]))


def make_inputs(n, h_q, h_kv, d, rotary_dim, page_size, dtype, device, gen, cos_sin_dtype=None,
                max_pos=300):
    num_pages = -(-n // page_size) + 2
    q = torch.randn(n, h_q, d, generator=gen).to(dtype)
    k = torch.randn(n, h_kv, d, generator=gen).to(dtype)
    v = torch.randn(n, h_kv, d, generator=gen).to(dtype)
    positions = torch.randint(0, max_pos, (n,), generator=gen)
    cos_sin = ref.rope_cos_sin_cache(max_pos, rotary_dim, dtype=cos_sin_dtype or torch.float32)
    k_cache = torch.randn(num_pages, page_size, h_kv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_pages, page_size, h_kv, d, generator=gen).to(dtype)
    slots = torch.randperm(num_pages * page_size, generator=gen)[:n].to(torch.int32)
    slots[torch.rand(n, generator=gen) < 0.25] = -1
    return [t.to(device) for t in (q, k, v, positions, cos_sin, k_cache, v_cache, slots)]


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("h_q,h_kv,d,rotary_dim", [(8, 2, 64, 64), (4, 4, 128, 128),
                                                   (4, 1, 128, 64), (3, 3, 40, 16)])
@pytest.mark.parametrize("page_size", [1, 16])
def test_matches_reference(device, is_neox, h_q, h_kv, d, rotary_dim, page_size):
    for dtype in dtypes(device):
        for cos_sin_dtype in dict.fromkeys([torch.float32, dtype]):
            gen = torch.Generator().manual_seed(d * 10 + rotary_dim + page_size)
            args = make_inputs(21, h_q, h_kv, d, rotary_dim, page_size, dtype, device, gen,
                               cos_sin_dtype)
            q, k, v, positions, cos_sin, k_cache, v_cache, slots = args
            want = [t.cpu().clone() for t in (q, k_cache, v_cache)]
            ref.rope_append_paged_kv(want[0], k.cpu(), v.cpu(), positions.cpu(), cos_sin.cpu(),
                                     want[1], want[2], slots.cpu(), is_neox=is_neox)
            k_before = k.clone()
            returned = rope_append_paged_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots,
                                            is_neox=is_neox)
            assert returned is q
            tol = TOLERANCES[dtype]
            torch.testing.assert_close(q.cpu(), want[0], **tol)
            torch.testing.assert_close(k_cache.cpu(), want[1], **tol)
            assert torch.equal(v_cache.cpu(), want[2])  # v is copied, not rounded
            assert torch.equal(k, k_before)  # k itself is left unchanged


def test_int32_positions_and_identity_at_zero(device):
    """Position 0 is the identity rotation; int32 positions are accepted."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, _, cos_sin, k_cache, v_cache, _ = make_inputs(4, 4, 2, 64, 64, 16, torch.float32,
                                                          device, gen)
    q0, slots = q.clone(), torch.tensor([0, 1, 2, 3], dtype=torch.int32, device=device)
    positions = torch.zeros(4, dtype=torch.int32, device=device)
    rope_append_paged_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots)
    torch.testing.assert_close(q, q0, atol=0, rtol=0)
    torch.testing.assert_close(k_cache[0, :4], k, atol=0, rtol=0)


def test_opcheck():
    gen = torch.Generator().manual_seed(1)
    args = make_inputs(6, 4, 2, 64, 64, 16, torch.float32, "cpu", gen)
    torch.library.opcheck(OPS.rope_append_paged_kv.default, (*args, True))


def test_torch_compile():
    gen = torch.Generator().manual_seed(2)
    args = make_inputs(5, 4, 2, 64, 32, 16, torch.float32, "cpu", gen)
    expected = [t.clone() for t in args]

    def step(q, *rest):
        return rope_append_paged_kv(q, *rest) * 1.0

    got = torch.compile(step, backend="aot_eager")(*args)
    want = step(*expected)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(args[5], expected[5])


# ------------------------------------------------------------------------------- bad input

def good_inputs(device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    return make_inputs(5, 4, 2, 64, 64, 16, dtype, device, gen, max_pos=64)


def test_rejects_out_of_range_positions(device):
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    for bad in (64, -1):
        pos = positions.clone()
        pos[2] = bad
        with pytest.raises(RuntimeError, match=r"positions.*must be in \[0, 64\)"):
            rope_append_paged_kv(q, k, v, pos, cos_sin, k_cache, v_cache, slots)


def test_rejects_out_of_range_slots(device):
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    bad = slots.clone()
    bad[0] = k_cache.shape[0] * k_cache.shape[1]
    with pytest.raises(RuntimeError, match="slot_mapping.*out of range"):
        rope_append_paged_kv(q, k, v, positions, cos_sin, k_cache, v_cache, bad)


def test_rejects_wrong_dtypes(device):
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    with pytest.raises(TypeError, match="positions must be an int32 or int64 tensor"):
        rope_append_paged_kv(q, k, v, positions.float(), cos_sin, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="cos_sin_cache must be float32 or the dtype of q"):
        rope_append_paged_kv(q, k, v, positions, cos_sin.double(), k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="q must have the cache dtype"):
        rope_append_paged_kv(q.to(torch.bfloat16), k, v, positions, cos_sin, k_cache, v_cache,
                             slots)
    with pytest.raises(RuntimeError, match="k must have the cache dtype"):
        rope_append_paged_kv(q, k.to(torch.bfloat16), v, positions, cos_sin, k_cache, v_cache,
                             slots)


def test_rejects_wrong_shapes(device):
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    with pytest.raises(RuntimeError, match=r"q must be \[5, H_q, 64\]"):
        rope_append_paged_kv(q[:4], k, v, positions, cos_sin, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="q must be 3-D"):
        rope_append_paged_kv(q.reshape(5, -1), k, v, positions, cos_sin, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match=r"positions must have one entry per row of k \(5\)"):
        rope_append_paged_kv(q, k, v, positions[:3], cos_sin, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="rotary_dim must be even and in"):
        rope_append_paged_kv(q, k, v, positions, cos_sin[:, :7].contiguous(), k_cache, v_cache,
                             slots)
    wide = torch.cat([cos_sin, cos_sin], dim=1)  # rotary_dim 128 > head dim 64
    with pytest.raises(RuntimeError, match="rotary_dim must be even and in"):
        rope_append_paged_kv(q, k, v, positions, wide, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="cos_sin_cache must be 2-D"):
        rope_append_paged_kv(q, k, v, positions, cos_sin[0], k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="slot_mapping must have one slot per row of k"):
        rope_append_paged_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots[:4])


def test_rejects_non_contiguous(device):
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    q_strided = torch.empty(4, 5, 64, device=device).transpose(0, 1)
    q_strided.copy_(q)
    with pytest.raises(RuntimeError, match="q must be contiguous"):
        rope_append_paged_kv(q_strided, k, v, positions, cos_sin, k_cache, v_cache, slots)
    cs_strided = torch.empty(64, 300, device=device).t()
    with pytest.raises(RuntimeError, match="cos_sin_cache must be contiguous"):
        rope_append_paged_kv(q, k, v, positions, cs_strided, k_cache, v_cache, slots)


def test_rejects_wrong_device(device):
    if device.type != "cuda":
        pytest.skip("needs a second device type that reaches the kernel (CUDA)")
    q, k, v, positions, cos_sin, k_cache, v_cache, slots = good_inputs(device)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        rope_append_paged_kv(q, k, v, positions, cos_sin.cpu(), k_cache, v_cache, slots)
