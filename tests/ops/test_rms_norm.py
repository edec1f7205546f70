"""``rms_norm``, ``fused_add_rms_norm`` and ``silu_and_mul`` against ``reference.py``: one row and many (the
parallel path), odd widths, leading dims, activations and weights in each float dtype, in place;
Hugging Face's RMSNorm (the model's torch path) as a second oracle; opcheck; bad input."""

import pytest
import torch

from leapdec import reference as ref
from leapdec.ops import fused_add_rms_norm, rms_norm, silu_and_mul
from leapdec.ops._lib import OPS

from devices import TOLERANCES, dtypes_for

SHAPES = [(1, 1), (1, 7), (1, 192), (3, 576), (5, 33), (2, 3, 64), (300, 100), (4, 0)]
WEIGHT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def close(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    # the sum of squares runs in another order: one rounding step of the output dtype at most
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCES[want.dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, shape):
    gen = torch.Generator().manual_seed(sum(shape) + len(shape))
    for dtype in dtypes_for(device):
        for w_dtype in WEIGHT_DTYPES:
            x = (3 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)
            r = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            w = torch.randn(shape[-1], generator=gen).to(device=device, dtype=w_dtype)
            eps = 1e-5
            close(rms_norm(x, w, eps), ref.rms_norm(x, w, eps))
            want_x, want_r = ref.fused_add_rms_norm(x, r, w, eps)
            x2, r2 = x.clone(), r.clone()
            got_x, got_r = fused_add_rms_norm(x2, r2, w, eps)
            assert got_x.data_ptr() == x2.data_ptr() and got_r.data_ptr() == r2.data_ptr()   # in place
            assert torch.equal(r2, want_r)                                  # the add rounds exactly once
            close(x2, want_x)


def test_in_place_out(device):
    x = torch.randn(4, 50, device=device)
    w = torch.randn(50, device=device)
    want = ref.rms_norm(x, w)
    assert rms_norm(x, w, out=x) is x
    close(x, want)


def test_matches_the_models_torch_norm(device):
    """The model's RMSNorm module (Hugging Face's math) on the torch path and on the op agree."""
    from leapdec.models.transformer import RMSNorm
    norm = RMSNorm(96, 1e-6).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = torch.randn(5, 96, device=device)
    with torch.no_grad():
        close(rms_norm(x, norm.weight, 1e-6), norm(x.requires_grad_(True)).detach())


def test_zero_rows_and_zero_eps():
    assert rms_norm(torch.empty(0, 8), torch.ones(8)).shape == (0, 8)
    x = torch.tensor([[3.0, 4.0]])
    close(rms_norm(x, torch.ones(2), 0.0), x / (12.5 ** 0.5))


def test_opcheck():
    x, w, r = torch.randn(3, 20), torch.randn(20).bfloat16(), torch.randn(3, 20)
    torch.library.opcheck(OPS.rms_norm.default, (torch.empty(3, 20), x, w, 1e-6))
    torch.library.opcheck(OPS.fused_add_rms_norm.default, (x.clone(), r.clone(), w, 1e-6))


@pytest.mark.parametrize("bad,match", [
    (lambda x, w, o: (o, x, w[:5], 1e-6), "weight must be \\[16\\]"),
    (lambda x, w, o: (o, x, w.view(4, 4), 1e-6), "weight must be 1-D"),
    (lambda x, w, o: (o[:, :8], x, w, 1e-6), "out must have input's shape"),
    (lambda x, w, o: (o.bfloat16(), x, w, 1e-6), "out must have the dtype of input"),
    (lambda x, w, o: (o, x.int(), w, 1e-6), "input must be float32, bfloat16 or float16"),
    (lambda x, w, o: (o, x.t().contiguous().t(), w, 1e-6), "input must be contiguous"),
    (lambda x, w, o: (o, x, w, -1.0), "eps must be finite and >= 0"),
    (lambda x, w, o: (o, x, w, float("nan")), "eps must be finite"),
    (lambda x, w, o: (o, x[0, 0], w, 1e-6), "input must have at least one dimension"),
])
def test_bad_input(bad, match):
    x, w = torch.randn(16, 16), torch.randn(16)
    with pytest.raises(RuntimeError, match=match):
        OPS.rms_norm(*bad(x, w, torch.empty(16, 16)))


def test_bad_residual():
    x, w = torch.randn(4, 16), torch.randn(16)
    with pytest.raises(RuntimeError, match="residual must have input's shape"):
        OPS.fused_add_rms_norm(x, torch.randn(4, 15), w, 1e-6)
    with pytest.raises(RuntimeError, match="residual must have the dtype of input"):
        OPS.fused_add_rms_norm(x, torch.randn(4, 16).bfloat16(), w, 1e-6)
    with pytest.raises(RuntimeError, match="different tensors"):
        OPS.fused_add_rms_norm(x, x, w, 1e-6)


@pytest.mark.parametrize("shape", [(1, 2), (1, 3072), (3, 1024), (5, 66), (2, 3, 64), (300, 40), (4, 0)])
def test_silu_and_mul_matches_reference(device, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    for dtype in dtypes_for(device):
        x = (4 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype)
        close(silu_and_mul(x), ref.silu_and_mul(x))
        gate, up = x.float().chunk(2, dim=-1)                       # and the plain float formula
        torch.testing.assert_close(silu_and_mul(x).float(), torch.nn.functional.silu(gate) * up,
                                   **TOLERANCES[dtype])


def test_silu_and_mul_opcheck_and_bad_input():
    x = torch.randn(3, 20)
    torch.library.opcheck(OPS.silu_and_mul.default, (torch.empty(3, 10), x))
    with pytest.raises(RuntimeError, match="last dim must be even"):
        OPS.silu_and_mul(torch.empty(3, 3), torch.randn(3, 7))
    with pytest.raises(RuntimeError, match="out must be \\[3, 10\\]"):
        OPS.silu_and_mul(torch.empty(3, 20), x)
    with pytest.raises(RuntimeError, match="out must have the dtype of input"):
        OPS.silu_and_mul(torch.empty(3, 10).bfloat16(), x)
    with pytest.raises(RuntimeError, match="input must be contiguous"):
        OPS.silu_and_mul(torch.empty(20, 2), torch.randn(4, 20).t())
    with pytest.raises(RuntimeError, match="input must be float32"):
        OPS.silu_and_mul(torch.empty(3, 10, dtype=torch.int32), x.int())


def test_the_mlp_takes_the_fused_path_and_matches_the_torch_path():
    """With gate/up fused (stream_weights), a few-row MLP step runs linear + silu_and_mul + linear;
    it equals the unfused torch modules."""
    from leapdec.models.linear import stream_weights
    from leapdec.models.testing import tiny_model
    model = tiny_model("llama", seed=11)
    mlp = model.layers[0].mlp
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        want = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        stream_weights(model, torch.float32)
        assert mlp._fused_gate_up is not None and mlp._fused_gate_up.matmul(x) is not None
        torch.testing.assert_close(mlp(x), want, atol=1e-5, rtol=1e-5)
