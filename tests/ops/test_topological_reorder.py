"""topological_reorder (WeDLM): observed tokens first, masked after, each group in logical order.
Hand-built rows (all observed, all masked, alternating), random and ragged batches against
leapdec.reference, wide windows (several CUDA tiles), dtypes, opcheck and bad inputs."""

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import topological_reorder

OPS = torch.ops.leapdec


def check(tokens, masked, positions=None):
    out = topological_reorder(tokens, masked, positions)
    pos = positions if positions is not None else torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    exp = ref.topological_reorder(tokens, masked, pos)
    for got, want in zip(out, exp):
        assert got.dtype == want.dtype
        assert torch.equal(got.cpu(), want.cpu())
    tok_out, pos_out, perm, inv_perm = (t.cpu() for t in out)
    rows = torch.arange(tokens.shape[0]).unsqueeze(1)
    assert torch.equal(perm.long()[rows, inv_perm.long()], torch.arange(tokens.shape[1]).expand_as(perm))
    n_obs = (~masked.cpu()).sum(1)
    for b in range(tokens.shape[0]):
        p = perm[b].tolist()
        k = int(n_obs[b])
        assert p[:k] == sorted(p[:k]) and p[k:] == sorted(p[k:])  # stable within each group
        assert not bool(masked.cpu()[b, p[:k]].any()) and bool(masked.cpu()[b, p[k:]].all())
    return out


def test_hand_built_rows(device):
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]] * 4, device=device)
    masked = torch.tensor([[0, 0, 0, 0, 0, 0],
                           [1, 1, 1, 1, 1, 1],
                           [0, 1, 0, 1, 0, 1],
                           [1, 1, 0, 1, 0, 0]], dtype=torch.bool, device=device)
    positions = torch.arange(100, 106, device=device).expand(4, -1).contiguous()
    tok, pos, perm, inv = check(tokens, masked, positions)
    assert perm.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 2, 4, 1, 3, 5], [2, 4, 5, 0, 1, 3]]
    assert tok[3].tolist() == [12, 14, 15, 10, 11, 13]
    assert pos[3].tolist() == [102, 104, 105, 100, 101, 103]
    assert inv[3].tolist() == [3, 4, 0, 5, 1, 2]


@pytest.mark.parametrize("width", [1, 7, 64, 300, 1000])
def test_random_ragged_rows(device, width):
    gen = torch.Generator().manual_seed(width)
    batch = 5
    tokens = torch.randint(0, 50000, (batch, width), generator=gen).to(device)
    probs = torch.tensor([0.0, 1.0, 0.5, 0.1, 0.9]).unsqueeze(1)  # all observed ... mostly masked
    masked = (torch.rand(batch, width, generator=gen) < probs).to(device)
    positions = (torch.arange(width) + torch.randint(0, 1000, (batch, 1), generator=gen)).to(device)
    check(tokens, masked, positions)
    check(tokens, masked)


@pytest.mark.parametrize("tok_dtype,pos_dtype", [(torch.int64, torch.int32), (torch.int32, torch.int64),
                                                 (torch.int32, torch.int32)])
def test_index_dtypes(device, tok_dtype, pos_dtype):
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 1000, (3, 40), generator=gen).to(device, tok_dtype)
    masked = (torch.rand(3, 40, generator=gen) < 0.4).to(device)
    positions = torch.arange(40).expand(3, -1).to(device, pos_dtype)
    tok, pos, _, _ = check(tokens, masked, positions)
    assert tok.dtype == tok_dtype and pos.dtype == pos_dtype


def test_empty(device):
    tokens = torch.zeros(0, 8, dtype=torch.long, device=device)
    out = topological_reorder(tokens, torch.zeros(0, 8, dtype=torch.bool, device=device))
    assert all(t.shape == (0, 8) for t in out)
    tokens = torch.zeros(3, 0, dtype=torch.long, device=device)
    out = topological_reorder(tokens, torch.zeros(3, 0, dtype=torch.bool, device=device))
    assert all(t.shape == (3, 0) for t in out)


def test_opcheck(device):
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 100, (2, 9), generator=gen).to(device)
    masked = (torch.rand(2, 9, generator=gen) < 0.5).to(device)
    positions = torch.arange(9).expand(2, -1).contiguous().to(device)
    outs = (torch.empty_like(tokens), torch.empty_like(positions),
            torch.empty(2, 9, dtype=torch.int32, device=device), torch.empty(2, 9, dtype=torch.int32, device=device))
    torch.library.opcheck(OPS.topological_reorder.default, (tokens, masked, positions, *outs))


def test_bad_inputs(device):
    tokens = torch.zeros(2, 6, dtype=torch.long, device=device)
    masked = torch.zeros(2, 6, dtype=torch.bool, device=device)
    with pytest.raises(TypeError, match="masked must be a bool"):
        topological_reorder(tokens, masked.int())
    with pytest.raises(TypeError, match="tokens must be int64 or int32"):
        topological_reorder(tokens.float(), masked)
    with pytest.raises(ValueError, match=r"tokens must be a \[B, W\]"):
        topological_reorder(tokens[0], masked[0])
    with pytest.raises(RuntimeError, match="masked must have the shape of tokens"):
        topological_reorder(tokens, masked[:, :5])
    with pytest.raises(RuntimeError, match="positions must be int64 or int32"):
        topological_reorder(tokens, masked, tokens.float())
    with pytest.raises(RuntimeError, match="positions must have the shape of tokens"):
        topological_reorder(tokens, masked, tokens[:1])
    outs = [torch.empty_like(tokens), torch.empty_like(tokens), torch.empty(2, 6, dtype=torch.int32, device=device),
            torch.empty(2, 6, dtype=torch.int32, device=device)]
    bad = list(outs)
    bad[2] = torch.empty(2, 6, dtype=torch.int64, device=device)
    with pytest.raises(RuntimeError, match="perm must have dtype"):
        OPS.topological_reorder(tokens, masked, tokens, *bad)
    bad = list(outs)
    bad[0] = torch.empty(2, 6, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="tokens_out must have dtype"):
        OPS.topological_reorder(tokens, masked, tokens, *bad)
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="must be on the device of tokens"):
            topological_reorder(tokens, masked.cpu())
