"""``linear`` against ``reference.linear``: few and many rows, odd sizes (row and column tails
of every tile), weights and activations in each float dtype and mixed, bias or none; the narrower
ISA builds; opcheck; the model layer that dispatches to it (grad, 16-bit weights); bad input."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from leapdec import reference as ref
from leapdec.models.linear import FEW_ROWS, Linear, linear as model_linear, stream_weights
from leapdec.ops import linear, pack_linear_weight
from leapdec.ops._lib import OPS

from devices import dtypes_for

SHAPES = [(1, 1, 1), (1, 7, 5), (2, 33, 100), (3, 16, 64), (5, 192, 576), (8, 21, 129),
          (13, 9, 33), (16, 64, 40), (17, 5, 24), (40, 70, 31)]


def weight_dtypes(device):
    return [torch.float32, torch.bfloat16, torch.float16]


def check(x, w, b, packed=False):
    got = linear(x, pack_linear_weight(w), b, out_features=w.shape[0]) if packed else linear(x, w, b)
    want = ref.linear(x, w, b)
    assert got.dtype == x.dtype and got.shape == want.shape
    # float32 accumulation in another order: error grows with K and the rounding of the output.
    k = x.shape[-1]
    tol = 1e-5 * (k ** 0.5) * 4 if x.dtype == torch.float32 else (1.6e-2 if x.dtype == torch.bfloat16 else 2e-3)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_reference(device, m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    for x_dtype in dtypes_for(device):
        for w_dtype in weight_dtypes(device):
            for with_bias in (False, True):
                x = torch.randn(m, k, generator=gen).to(device=device, dtype=x_dtype)
                w = torch.randn(n, k, generator=gen).to(device=device, dtype=w_dtype)
                b = torch.randn(n, generator=gen).to(device=device, dtype=w_dtype) if with_bias else None
                check(x, w, b)
                check(x, w, b, packed=True)


def test_leading_dims_and_strided_x(device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 48, generator=gen).to(device)
    w = torch.randn(10, 24, generator=gen).to(device)
    xs = x[..., ::2]                                     # not contiguous
    out = linear(xs, w)
    assert out.shape == (2, 3, 10)
    torch.testing.assert_close(out, ref.linear(xs, w), atol=1e-4, rtol=1e-4)


def test_empty(device):
    w = torch.randn(4, 8, device=device)
    assert linear(torch.randn(0, 8, device=device), w).shape == (0, 4)
    out = linear(torch.randn(3, 0, device=device), torch.randn(4, 0, device=device))
    assert torch.equal(out, torch.zeros(3, 4, device=device))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_isa_builds(isa):
    """The CPU kernel is compiled for AVX-512, AVX2 and the baseline ISA; LEAPDEC_CPU_ISA lowers
    the one that runs, so the narrower builds are checked here too."""
    here = Path(__file__).resolve().parent
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(here.parent)!r}, {str(here)!r}]
        import torch
        from test_linear import SHAPES, check
        gen = torch.Generator().manual_seed(0)
        for m, n, k in SHAPES:
            for wd in (torch.float32, torch.bfloat16, torch.float16):
                x = torch.randn(m, k, generator=gen)
                w = torch.randn(n, k, generator=gen).to(wd)
                check(x, w, torch.randn(n, generator=gen))
                check(x, w, torch.randn(n, generator=gen), packed=True)
    """)
    env = dict(os.environ, LEAPDEC_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_opcheck():
    x, w, b = torch.randn(3, 20), torch.randn(7, 20).bfloat16(), torch.randn(7)
    out = torch.empty(3, 7)
    torch.library.opcheck(OPS.linear.default, (out, x, w, b))


@pytest.mark.parametrize("bad,match", [
    (lambda x, w, o: (o, x[0], w, None), "x must be 2-D"),
    (lambda x, w, o: (o, x, w[:, :5], None), "weight must be"),
    (lambda x, w, o: (o[:, :2], x, w, None), "out must be"),
    (lambda x, w, o: (o.double(), x, w, None), "out must have the dtype of x"),
    (lambda x, w, o: (o, x, w.int(), None), "weight must be float32, bfloat16 or float16"),
    (lambda x, w, o: (o, x, w.t().contiguous().t(), None), "weight must be contiguous"),
    (lambda x, w, o: (o, x, w, torch.zeros(3)), "bias must be"),
    (lambda x, w, o: (o, x, torch.zeros(2, 1, 8, 8), None), "packed weight must be"),
    (lambda x, w, o: (o, x, torch.zeros(4, 6, 1), None), "weight must be 2-D"),
])
def test_bad_input(bad, match):
    x, w = torch.randn(2, 6), torch.randn(4, 6)
    with pytest.raises(RuntimeError, match=match):
        OPS.linear(*bad(x, w, torch.empty(2, 4)))


def test_pack_layout():
    w = torch.arange(10 * 13, dtype=torch.float32).view(10, 13)
    p = pack_linear_weight(w)
    assert p.shape == (2, 2, 8, 8)
    assert p[1, 1, 1, 4] == w[9, 12] and p[0, 1, 7, 0] == w[7, 8]
    assert p[1, 0, 2].abs().sum() == 0 and p[0, 1, 0, 5:].abs().sum() == 0      # zero padding
    with pytest.raises(ValueError, match="out_features"):
        linear(torch.randn(1, 13), p)


def test_packed_layer_follows_weight_changes():
    """A ``Linear`` reads its packed copy only while the weight is the one it packed."""
    torch.manual_seed(1)
    layer = Linear(20, 9)
    assert layer.packed_weight() is None
    layer.pack()
    assert layer.packed_weight() is layer._packed[0]
    x = torch.randn(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.weight.mul_(2)                               # in place: the packed copy is stale
        assert layer.packed_weight() is None
        torch.testing.assert_close(layer(x), ref.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(9, 20))    # replaced
        torch.testing.assert_close(layer(x), ref.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.pack()
        layer.weight.data = torch.randn(9, 20)                  # storage swapped, version unchanged
        torch.testing.assert_close(layer(x), ref.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.pack()
        layer.to(torch.bfloat16)                                 # dtype changed in place
        from leapdec.models.linear import weight_key
        assert layer._packed[1] != weight_key(layer.weight) and layer.weight.dtype == torch.bfloat16
        torch.testing.assert_close(layer(x), ref.linear(x, layer.weight, layer.bias.float()).float(),
                                   atol=1e-2, rtol=1e-2)


def test_model_layer_dispatch():
    """``Linear`` runs the op for few rows without grad, and F.linear otherwise (gradients flow);
    with streamed 16-bit weights both paths agree with the reference in the activations' dtype."""
    torch.manual_seed(0)
    layer = Linear(24, 10)
    few, many = torch.randn(3, 24), torch.randn(FEW_ROWS + 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(few), torch.nn.functional.linear(few, layer.weight, layer.bias))
    xg = few.clone().requires_grad_()
    layer(xg).sum().backward()                           # autograd path
    assert layer.weight.grad is not None and xg.grad is not None
    stream_weights(layer, torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and not layer.weight.requires_grad
    with torch.no_grad():
        for x in (few, many):
            out = layer(x)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, ref.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-4)
    assert model_linear(few, layer.weight).dtype == torch.float32


def test_stream_weights_unties_head_and_keeps_greedy_output():
    """A model with bf16-streamed weights keeps float32 activations, embeddings and KV cache; its
    tied LM head gets its own copy; greedy speculative decoding on it equals its own greedy AR."""
    import leapdec
    model = leapdec.load_model("stdlib-ar")
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight
    stream_weights(model, torch.bfloat16)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.embed_tokens.weight.dtype == torch.float32
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    ar = leapdec.generate(model, prompts, method="ar", max_new_tokens=24).tokens
    assert leapdec.generate(model, prompts, method="sd", max_new_tokens=24).tokens == ar
    with pytest.raises(ValueError, match="dtype must be"):
        stream_weights(model, torch.int8)


def test_bench_linear_quick(tmp_path):
    from leapdec.bench.linear import main
    assert main(["--quick", "--out", str(tmp_path), "--repeats", "1", "--warmup", "0", "--threads", "1"]) == 0
    import json
    report = json.loads((tmp_path / "linear.json").read_text())
    assert {r["rows"] for r in report["rows"]} == {1, 4}
    assert (tmp_path / "linear.png").exists() and (tmp_path / "linear.md").exists()


def test_fused_projections_match_separate_layers():
    """q/k/v and gate/up fused into one packed weight give the separate layers' outputs, and a
    replaced weight turns the fused path off."""
    import copy

    import leapdec
    model = leapdec.load_model("stdlib-ar")
    stream_weights(model, torch.bfloat16)
    layer = model.layers[0]
    assert layer.self_attn._fused_qkv is not None and layer.mlp._fused_gate_up is not None
    plain = copy.deepcopy(layer)
    plain.self_attn._fused_qkv = plain.mlp._fused_gate_up = None
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        for a, b in zip(layer.self_attn._qkv(x), plain.self_attn._qkv(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.mlp(x), plain.mlp(x), atol=1e-5, rtol=1e-5)
        layer.mlp.up_proj.weight = torch.nn.Parameter(torch.zeros_like(layer.mlp.up_proj.weight))
        assert layer.mlp._fused_gate_up(x) is None
        assert torch.equal(layer.mlp(x), torch.zeros_like(x))


def test_fused_linears_with_biases():
    """Fused layers with biases (Qwen2's q/k/v) give the layers' outputs; a bias written in place
    turns the fused path off."""
    from leapdec.models.linear import FusedLinears
    torch.manual_seed(2)
    layers = [Linear(12, 8), Linear(12, 5), Linear(12, 3, bias=False)]
    fused = FusedLinears(layers)
    x = torch.randn(2, 12)
    with torch.no_grad():
        for got, layer in zip(fused(x), layers):
            torch.testing.assert_close(got, ref.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layers[1].bias.add_(1)
        assert fused(x) is None
