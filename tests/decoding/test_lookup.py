"""Prompt-lookup decoding: n-gram drafts from the row's own tokens, verified on the speculative
core: greedy output identical to greedy AR (batch 1, ragged batches, stops), seeded sampling."""

import pytest
import torch

from leapdec.decoding import generate
from leapdec.decoding.lookup import find_draft
from leapdec.models.testing import tiny_model

PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [3, 4], list(range(10, 31)) + list(range(10, 20)), [9, 9, 9, 9]]


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny matmuls: one thread (tests/conftest.py)


def test_find_draft():
    assert find_draft([1, 2, 3, 4, 1, 2], 2, max_ngram=2) == [3, 4]
    assert find_draft([1, 2, 3, 4, 9, 2], 3, max_ngram=2) == [3, 4, 9]      # falls back to 1-gram
    assert find_draft([1, 2, 3], 3, max_ngram=3) == []
    assert find_draft([7, 7, 7], 5, max_ngram=2) == [7]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_lookup_equals_greedy_ar(arch):
    model = tiny_model(arch, seed=7)
    ar = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[])
    out = generate(model, PROMPTS, method="lookup", max_new_tokens=30, stop_tokens=[], page_size=4)
    assert out.tokens == ar.tokens
    for p, ref in zip(PROMPTS, ar.tokens):
        assert generate(model, [p], method="lookup", max_new_tokens=30, stop_tokens=[]).tokens == [ref]
    assert out.stats["model_calls"] <= ar.stats["model_calls"]
    stop = ar.tokens[2][7]
    ar_stop = generate(model, PROMPTS, method="ar", max_new_tokens=30, stop_tokens=[stop])
    assert generate(model, PROMPTS, method="lookup", max_new_tokens=30, stop_tokens=[stop]).tokens == ar_stop.tokens


def test_lookup_accepts_repeats():
    """A model that repeats its prompt: drafts are accepted several tokens at a time."""
    import leapdec
    from leapdec.train.corpus import eval_prompts

    model = leapdec.load_model("stdlib-ar")
    tok = leapdec.load_tokenizer("stdlib-ar")
    prompts = [tok.encode(p.prompt).ids for p in eval_prompts(2, seed=0)]
    ar = generate(model, prompts, method="ar", max_new_tokens=48)
    out = generate(model, prompts, method="lookup", max_new_tokens=48)
    assert out.tokens == ar.tokens and out.stats["mean_accepted_length"] > 1.3


def test_seeded_sampling_is_reproducible():
    model = tiny_model("llama", seed=2)
    a = generate(model, PROMPTS, method="lookup", max_new_tokens=16, temperature=0.8, seed=3, stop_tokens=[])
    b = generate(model, PROMPTS, method="lookup", max_new_tokens=16, temperature=0.8, seed=3, stop_tokens=[])
    assert a.tokens == b.tokens and a.stats["acceptance"] == "sampling"


def test_bad_options():
    model = tiny_model("llama", seed=2)
    with pytest.raises(ValueError, match="num_tokens"):
        generate(model, [[1, 2]], method="lookup", num_tokens=0)
    with pytest.raises(ValueError, match="min_ngram"):
        generate(model, [[1, 2]], method="lookup", min_ngram=3, max_ngram=2)
