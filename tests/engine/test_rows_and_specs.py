"""The engine's shared pieces: the one commit rule (stop tokens, stop strings, max_new_tokens,
finish reasons), NaN logits, the method specs that the registry, evaluate, CLI and train read,
and the model-kind check."""

import pytest
import torch

import leapdec
from leapdec.decoding import generate, methods
from leapdec.engine.rows import Row, Rows
from leapdec.engine.spec import method_spec, specs
from leapdec.models.testing import tiny_model

PROMPTS = [[5, 6, 7, 8, 9], [3, 4], list(range(10, 31))]


class CharTokenizer:
    """Token t decodes to chr(ord('a') + t % 26)."""

    def decode(self, ids):
        return "".join(chr(ord("a") + t % 26) for t in ids)


def test_row_commit_rules():
    r = Row(0, [1, 2], 5, {0})
    assert r.commit([4, 5]) == 2 and r.out == [4, 5] and not r.done
    assert r.commit([6, 0, 7]) == 2 and r.out == [4, 5, 6] and r.finish_reason == "stop"
    r = Row(0, [1], 3, {0})
    assert r.commit([4, 5, 6, 7]) == 3 and r.out == [4, 5, 6] and r.finish_reason == "length"
    assert r.commit([1]) == 0


def test_row_stop_strings_keep_the_completing_token():
    tok = CharTokenizer()
    r = Row(0, [1], 20, set(), ("cd",), tok.decode)
    r.commit([0, 1])             # "ab"
    assert not r.done
    r.commit([2, 3, 4])          # "cde": "cd" completes at token 3
    assert r.out == [0, 1, 2, 3] and r.finish_reason == "stop" and r.text() == "ab"


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        Rows([[1]], 4, set(), stop_strings=["x"], tokenizer=None)


@pytest.mark.parametrize("method", ["ar", "lookup"])
def test_generate_stop_strings_finish_reason_and_text(method):
    model = tiny_model("llama", seed=4)
    tok = CharTokenizer()
    free = generate(model, PROMPTS, method="ar", max_new_tokens=12, stop_tokens=[], tokenizer=tok)
    assert free.finish_reason == ["length"] * 3 and free.text == [tok.decode(t) for t in free.tokens]
    text = tok.decode(free.tokens[0])
    stop = text[4:6]
    out = generate(model, PROMPTS, method=method, max_new_tokens=12, stop_tokens=[], tokenizer=tok,
                   stop_strings=[stop])
    first = text.find(stop)
    assert out.tokens[0] == free.tokens[0][:first + 2] and out.finish_reason[0] == "stop"
    assert out.text[0] == text[:first]


def test_diffusion_methods_get_finish_reasons_too():
    model = leapdec.load_model("stdlib-mdm")
    out = generate(model, [[5, 6, 7]], method="llada", max_new_tokens=8, steps=4)
    assert out.finish_reason is not None and len(out.finish_reason) == 1
    assert isinstance(out.text[0], str)            # the zoo model's tokenizer is known


@pytest.mark.parametrize("method", ["ar", "lookup", "medusa"])
def test_nan_logits_are_an_error_naming_the_step(method, monkeypatch):
    from leapdec.models.heads import MedusaHeads

    model = tiny_model("llama", seed=3)
    heads = MedusaHeads.from_base(model, 2)
    original = model.forward_paged
    calls = {"n": 0}

    def poisoned(step, cache, return_hidden=False):
        calls["n"] += 1
        out = original(step, cache, return_hidden=return_hidden)
        if calls["n"] >= 3:
            if return_hidden:
                return out[0] * float("nan"), out[1]
            return out * float("nan")
        return out

    monkeypatch.setattr(model, "forward_paged", poisoned)
    options = {"heads": heads, "tree": 3} if method == "medusa" else {}
    with pytest.raises(FloatingPointError, match=f"{method}: .*NaN logits at step 2"):
        generate(model, PROMPTS[:1], method=method, max_new_tokens=10, stop_tokens=[], **options)


def test_every_method_has_one_spec_read_by_evaluate_cli_and_train():
    from leapdec.evaluate import METHOD_BASE_MODEL
    from leapdec.train.__main__ import RECIPES

    names = {s.name for s in specs()}
    assert names == set(methods()) == set(METHOD_BASE_MODEL)
    for s in specs():
        assert s.recipe is None or s.recipe in RECIPES, s
        assert s.base_model in leapdec.zoo.available()
    assert method_spec("medusa").lossless and method_spec("llada").model_kind == "masked"
    with pytest.raises(ValueError, match="unknown decoding method 'ctc_attention'"):
        method_spec("ctc_attention")


def test_model_kind_is_checked():
    wedlm = leapdec.load_model("stdlib-wedlm")
    with pytest.raises(ValueError, match="method 'llada' decodes a bidirectional"):
        generate(wedlm, [[5, 6]], method="llada", max_new_tokens=4)
    mdm = leapdec.load_model("stdlib-mdm")
    with pytest.raises(ValueError, match="method 'ar' decodes a causal"):
        generate(mdm, [[5, 6]], method="ar", max_new_tokens=4)


def test_prompt_longer_than_the_context_is_an_error():
    model = tiny_model("llama", seed=1)
    n = model.config.max_position_embeddings + 1
    with pytest.raises(ValueError, match="more than the model's context"):
        generate(model, [[5] * n], max_new_tokens=1)


def test_a_transformers_model_gets_a_hint():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    hf = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(TypeError, match="leapdec.load_model"):
        generate(hf, [[1, 2]], max_new_tokens=2)


def test_image_models_are_reached_through_leapdec_images():
    import leapdec

    assert hasattr(leapdec.images, "sample")                 # lazily imported attribute
    with pytest.raises(ValueError, match="leapdec.images.load"):
        leapdec.load_model("digits-maskgit")
