"""The shared self-distillation data set (leapdec.train.distill) on the zoo's stdlib-ar."""

import time

import pytest

import leapdec
from leapdec.train import distill

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return leapdec.load_model("stdlib-ar"), leapdec.load_tokenizer("stdlib-ar")


def test_heldout_requests_stay_out_of_train():
    train = {r[:2] for r in distill._pool("train", None)}
    heldout = {r[:2] for r in distill._pool("heldout", None)}
    assert heldout and len(train) > 10 * len(heldout)
    assert not train & heldout
    # a seeded shuffle: any n is a prefix of a larger n
    assert distill.requests(5, "train", seed=1) == distill.requests(9, "train", seed=1)[:5]
    assert distill.requests(5, "train", seed=1) != distill.requests(5, "train", seed=2)


def test_plain_prompt_is_signature_and_docstring(base):
    model, tok = base
    request = distill.requests(1, "heldout")[0]
    ids = distill.prompt_ids("stdlib-ar", tok, request, chat=False)
    assert ids[0] == tok.token_to_id("<|endoftext|>")
    assert tok.decode(ids[1:]) == request[2]
    assert not distill.is_chat_model("stdlib-ar")


def test_answers_deterministic_and_cached(base, tmp_path, monkeypatch):
    model, tok = base
    monkeypatch.setenv("LEAPDEC_CACHE_DIR", str(tmp_path))
    kw = dict(max_new_tokens=8, batch=3, model=model, tokenizer=tok, progress=False)
    first = distill.answers("stdlib-ar", 4, "heldout", cache=False, **kw)
    assert first == distill.answers("stdlib-ar", 4, "heldout", cache=False, **kw)
    assert len(first) == 4
    eos = set(model.config.stop_token_ids)
    for prompt, answer in first:
        assert 1 <= len(answer) <= 8 and not eos & set(answer[:-1])
        assert prompt == distill.prompt_ids("stdlib-ar", tok, distill.requests(4, "heldout")[first.index((prompt, answer))], False)

    made = distill.answers("stdlib-ar", 4, "heldout", **kw)
    assert made == first
    assert list(tmp_path.glob("distill/stdlib-ar-heldout-8-0-*.json"))
    start = time.perf_counter()
    again = distill.answers("stdlib-ar", 4, "heldout", max_new_tokens=8, progress=False)  # no model given
    assert time.perf_counter() - start < 2.0
    assert again == first
    assert distill.answers("stdlib-ar", 2, "heldout", max_new_tokens=8, progress=False) == first[:2]

    train = distill.answers("stdlib-ar", 2, "train", cache=False, **kw)
    assert not {tuple(p) for p, _ in train} & {tuple(p) for p, _ in first}


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        distill.answers("stdlib-ar", 2, "test")
    with pytest.raises(ValueError, match="n must"):
        distill.answers("stdlib-ar", 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        distill.answers("stdlib-ar", 2, max_new_tokens=0)
