"""``append_paged_kv`` and ``move_kv_slots`` against ``reference.py``: random and skipped
slots, page sizes 1 and 16, overlapping moves (all reads before any write); opcheck,
torch.compile, and the errors bad input must raise."""

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import append_paged_kv, move_kv_slots
from leapdec.ops._lib import OPS

from devices import dtypes_for


def dtypes(device):
    return list(dict.fromkeys(dtypes_for(device) + [torch.float16]))


def random_cache(num_pages, page_size, h_kv, d, dtype, device, gen):
    k = torch.randn(num_pages, page_size, h_kv, d, generator=gen).to(dtype).to(device)
    v = torch.randn(num_pages, page_size, h_kv, d, generator=gen).to(dtype).to(device)
    return k, v


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("h_kv,d", [(2, 64), (1, 128), (3, 40)])
def test_append_matches_reference(device, page_size, h_kv, d):
    """Distinct random slots in any order, some rows skipped with slot -1."""
    for dtype in dtypes(device):
        gen = torch.Generator().manual_seed(page_size * 100 + d)
        num_pages, n = 9, 37
        k_cache, v_cache = random_cache(num_pages, page_size, h_kv, d, dtype, device, gen)
        n = min(n, num_pages * page_size)
        slots = torch.randperm(num_pages * page_size, generator=gen)[:n].to(torch.int32)
        slots[torch.rand(n, generator=gen) < 0.2] = -1
        k = torch.randn(n, h_kv, d, generator=gen).to(dtype).to(device)
        v = torch.randn(n, h_kv, d, generator=gen).to(dtype).to(device)
        want_k, want_v = k_cache.cpu().clone(), v_cache.cpu().clone()
        ref.append_paged_kv(k.cpu(), v.cpu(), want_k, want_v, slots)
        append_paged_kv(k, v, k_cache, v_cache, slots.to(device))
        assert torch.equal(k_cache.cpu(), want_k) and torch.equal(v_cache.cpu(), want_v)


def test_append_empty_and_int64_slots(device):
    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache = random_cache(2, 16, 2, 64, torch.float32, device, gen)
    before = k_cache.clone()
    empty = torch.empty(0, 2, 64, device=device)
    append_paged_kv(empty, empty, k_cache, v_cache, torch.empty(0, dtype=torch.int32, device=device))
    assert torch.equal(k_cache, before)
    rows = torch.randn(2, 2, 64, generator=gen).to(device)
    append_paged_kv(rows, rows + 1, k_cache, v_cache, torch.tensor([31, 0], device=device))
    assert torch.equal(k_cache[1, 15], rows[0]) and torch.equal(v_cache[0, 0], rows[1] + 1)


@pytest.mark.parametrize("page_size", [1, 16])
def test_move_matches_reference(device, page_size):
    """Overlapping moves: a shift by one (each destination is the next source), a swap,
    and a tree-compaction pattern (accepted nodes moved to the front of the block)."""
    for dtype in dtypes(device):
        gen = torch.Generator().manual_seed(page_size)
        num_pages = 64 // page_size
        k_cache, v_cache = random_cache(num_pages, page_size, 2, 64, dtype, device, gen)
        moves = [
            (list(range(10, 30)), list(range(11, 31))),               # shift right by one
            (list(range(11, 31)), list(range(10, 30))),               # shift left by one
            ([3, 40], [40, 3]),                                       # swap
            ([20, 23, 27, 31], [17, 18, 19, 20]),                     # compaction
            (torch.randperm(64, generator=gen)[:24].tolist(),
             torch.randperm(64, generator=gen)[:24].tolist()),       # random, distinct dsts
        ]
        for src, dst in moves:
            want_k, want_v = k_cache.cpu().clone(), v_cache.cpu().clone()
            src_t = torch.tensor(src, dtype=torch.int32)
            dst_t = torch.tensor(dst, dtype=torch.int32)
            ref.move_kv_slots(want_k, want_v, src_t, dst_t)
            move_kv_slots(k_cache, v_cache, src_t.to(device), dst_t.to(device))
            assert torch.equal(k_cache.cpu(), want_k) and torch.equal(v_cache.cpu(), want_v)


def test_move_nothing(device):
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache = random_cache(2, 16, 2, 64, torch.float32, device, gen)
    before = k_cache.clone()
    none = torch.empty(0, dtype=torch.int32, device=device)
    move_kv_slots(k_cache, v_cache, none, none)
    assert torch.equal(k_cache, before)


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    k_cache, v_cache = random_cache(4, 16, 2, 64, torch.float32, "cpu", gen)
    k = torch.randn(5, 2, 64, generator=gen)
    slots = torch.tensor([3, -1, 17, 63, 40], dtype=torch.int32)
    torch.library.opcheck(OPS.append_paged_kv.default, (k, k + 1, k_cache, v_cache, slots))
    src = torch.tensor([1, 2, 3], dtype=torch.int32)
    torch.library.opcheck(OPS.move_kv_slots.default, (k_cache, v_cache, src, src + 1))


def test_torch_compile():
    gen = torch.Generator().manual_seed(3)
    k_cache, v_cache = random_cache(4, 16, 2, 64, torch.float32, "cpu", gen)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    k = torch.randn(3, 2, 64, generator=gen)
    slots = torch.tensor([5, -1, 33], dtype=torch.int32)

    def write(k, k_cache, v_cache, slots):
        append_paged_kv(k * 2.0, k, k_cache, v_cache, slots)
        move_kv_slots(k_cache, v_cache, slots[:1], slots[:1] + 1)

    torch.compile(write, backend="aot_eager")(k, k_cache, v_cache, slots)
    write(k, want_k, want_v, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


# ------------------------------------------------------------------------------- bad input

def append_inputs(device):
    gen = torch.Generator().manual_seed(4)
    k_cache, v_cache = random_cache(4, 16, 2, 64, torch.float32, device, gen)
    k = torch.randn(3, 2, 64, generator=gen).to(device)
    slots = torch.tensor([0, 5, 9], dtype=torch.int32, device=device)
    return k, k.clone(), k_cache, v_cache, slots


def test_append_rejects_wrong_dtypes(device):
    k, v, k_cache, v_cache, slots = append_inputs(device)
    with pytest.raises(RuntimeError, match="k must have the cache dtype"):
        append_paged_kv(k.to(torch.bfloat16), v, k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="v must have the cache dtype"):
        append_paged_kv(k, v.to(torch.bfloat16), k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="v_cache must have the dtype of k_cache"):
        append_paged_kv(k, v, k_cache, v_cache.to(torch.bfloat16), slots)
    with pytest.raises(RuntimeError, match="k_cache must be float32, bfloat16 or float16"):
        append_paged_kv(k.double(), v.double(), k_cache.double(), v_cache.double(), slots)
    with pytest.raises(TypeError, match="slot_mapping must be an int32"):
        append_paged_kv(k, v, k_cache, v_cache, slots.float())


def test_append_rejects_wrong_shapes(device):
    k, v, k_cache, v_cache, slots = append_inputs(device)
    with pytest.raises(RuntimeError, match=r"k must be \[N, 2, 64\] to match the cache"):
        append_paged_kv(k[:, :1].contiguous(), v[:, :1].contiguous(), k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="v must have the shape of k"):
        append_paged_kv(k, v[:2], k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="k must be 3-D"):
        append_paged_kv(k.reshape(3, -1), v.reshape(3, -1), k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match=r"slot_mapping must have one slot per row of k \(3\)"):
        append_paged_kv(k, v, k_cache, v_cache, slots[:2])
    with pytest.raises(RuntimeError, match="v_cache must have the shape of k_cache"):
        append_paged_kv(k, v, k_cache, v_cache[:2], slots)


def test_append_rejects_non_contiguous(device):
    k, v, k_cache, v_cache, slots = append_inputs(device)
    k_strided = torch.empty(2, 3, 64, device=device).transpose(0, 1)
    k_strided.copy_(k)
    with pytest.raises(RuntimeError, match="k must be contiguous"):
        append_paged_kv(k_strided, v, k_cache, v_cache, slots)
    cache_strided = torch.empty(16, 4, 2, 64, device=device).transpose(0, 1)
    with pytest.raises(RuntimeError, match="k_cache must be contiguous"):
        append_paged_kv(k, v, cache_strided, cache_strided.clone(), slots)


def test_append_rejects_out_of_range_slots(device):
    k, v, k_cache, v_cache, slots = append_inputs(device)
    before = k_cache.clone()
    for bad in (64, 1000):
        with pytest.raises(RuntimeError, match="slot_mapping.*out of range"):
            append_paged_kv(k, v, k_cache, v_cache, torch.tensor([0, bad, 2], dtype=torch.int32,
                                                                 device=device))
    assert torch.equal(k_cache, before)  # nothing written


def test_wrong_device(device):
    if device.type != "cuda":
        pytest.skip("needs a second device type that reaches the kernel (CUDA)")
    k, v, k_cache, v_cache, slots = append_inputs(device)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        append_paged_kv(k.cpu(), v.cpu(), k_cache, v_cache, slots)
    with pytest.raises(RuntimeError, match="must be on the same device"):
        move_kv_slots(k_cache, v_cache, slots.cpu(), slots.cpu())


def test_move_rejects_bad_input(device):
    _, _, k_cache, v_cache, slots = append_inputs(device)
    before = k_cache.clone()
    with pytest.raises(RuntimeError, match="src_slots and dst_slots must have the same length"):
        move_kv_slots(k_cache, v_cache, slots, slots[:2])
    with pytest.raises(RuntimeError, match="dst_slots.*out of range"):
        move_kv_slots(k_cache, v_cache, slots, slots + 62)
    with pytest.raises(RuntimeError, match="src_slots.*out of range"):
        move_kv_slots(k_cache, v_cache, slots - 1, slots)  # -1 is not a valid source
    with pytest.raises(TypeError, match="dst_slots must be an int32"):
        move_kv_slots(k_cache, v_cache, slots, slots.float())
    with pytest.raises(RuntimeError, match="v_cache must have the dtype of k_cache"):
        move_kv_slots(k_cache, v_cache.to(torch.bfloat16), slots, slots)
    assert torch.equal(k_cache, before)
