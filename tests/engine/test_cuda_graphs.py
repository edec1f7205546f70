"""CUDA graphs of the engine's fixed-shape steps (run where a GPU is lent: `pytest -m cuda`):
the graphed verify / window steps give exactly the eager tokens, and graphs are reused."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.models.heads import MedusaHeads
from leapdec.models.testing import tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]


def _model(dtype=torch.float32):
    return tiny_model("qwen3", seed=9, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=64, device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_medusa_graphed_verify_equals_eager(dtype):
    model = _model(dtype)
    heads = MedusaHeads.from_base(model, 3, shared_lm_head=True)
    kw = dict(heads=heads, tree=8, max_new_tokens=30, stop_tokens=[])
    eager = generate(model, PROMPTS, method="medusa", static_steps=False, **kw)
    graph = generate(model, PROMPTS, method="medusa", static_steps=True, **kw)
    assert graph.tokens == eager.tokens
    assert generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[]).tokens == eager.tokens
    again = generate(model, PROMPTS, method="medusa", **kw)          # default on CUDA; graphs reused
    assert again.tokens == eager.tokens


def test_wedlm_graphed_window_equals_eager():
    model = _model()
    model.config.mask_token_id = 3
    kw = dict(max_new_tokens=24, threshold=1.9, window=4, stop_tokens=[])
    eager = generate(model, PROMPTS, method="wedlm", static_steps=False, **kw)
    graph = generate(model, PROMPTS, method="wedlm", static_steps=True, **kw)
    assert graph.tokens == eager.tokens


def test_lookup_and_sd_on_cuda_equal_ar():
    model = _model()
    draft = tiny_model("qwen3", seed=10, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64, num_hidden_layers=1, device="cuda")
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    assert generate(model, PROMPTS, method="lookup", max_new_tokens=30, stop_tokens=[]).tokens == ar.tokens
    assert generate(model, PROMPTS, method="sd", drafter=draft, max_new_tokens=30, stop_tokens=[]).tokens == ar.tokens
    # PEARL: the draft model on its own CUDA stream (a second thread) and in a second process
    for parallel in ("thread", "process", "none"):
        out = generate(model, PROMPTS, method="pearl", drafter=draft, parallel=parallel, max_new_tokens=30,
                       stop_tokens=[])
        assert out.tokens == ar.tokens, parallel
    kw = dict(method="pearl", drafter=draft, max_new_tokens=12, temperature=1.0, seed=3, stop_tokens=[])
    assert (generate(model, PROMPTS, parallel="thread", **kw).tokens
            == generate(model, PROMPTS, parallel="none", **kw).tokens)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_llada_graphed_block_steps_equal_eager(cache):
    from leapdec.decoding.llada import llada

    model = _model()
    model.config.causal, model.config.mask_token_id = False, 3
    kw = dict(max_new_tokens=32, block_length=8, steps=16, cache=cache, stop_tokens=[])
    assert llada(model, PROMPTS, static_steps=True, **kw).tokens == llada(model, PROMPTS, static_steps=False, **kw).tokens
