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


def test_hidden_states_and_the_recipes_targets(base, tmp_path, monkeypatch):
    import torch

    from leapdec.train import falcon, medusa

    model, tok = base
    monkeypatch.setenv("LEAPDEC_CACHE_DIR", str(tmp_path))
    pairs = distill.answers("stdlib-ar", 3, "heldout", max_new_tokens=12, batch=3, model=model, tokenizer=tok,
                            progress=False, cache=False)
    data = distill.hidden_states("stdlib-ar", pairs, model, progress=False)
    offsets = data["offsets"].tolist()
    for i, (p, a) in enumerate(pairs):
        seq = torch.tensor([p + a])
        assert data["tokens"][offsets[i]:offsets[i + 1]].tolist() == p + a
        h = model.hidden(seq)[0]
        torch.testing.assert_close(data["hidden"][offsets[i]:offsets[i + 1]].float(), h, atol=2e-3, rtol=2e-3)
        assert data["greedy"][offsets[i]:offsets[i + 1]].tolist() == model.lm_head(h).argmax(-1).tolist()
    again = distill.hidden_states("stdlib-ar", pairs, progress=False)          # cached: no model needed
    assert torch.equal(again["hidden"], data["hidden"])

    # Medusa: head i's target at answer position t is the token t + i + 2
    hidden, targets = medusa.distilled_targets(data, 2)
    p, a = pairs[0]
    seq = p + a
    assert targets[0].tolist() == [seq[len(p) + 1], seq[len(p) + 2]]
    torch.testing.assert_close(hidden[0], data["hidden"][len(p) - 1].float())

    # Falcon: a window of the precomputed stream matches make_targets on the same tokens (a window
    # starting later keeps the features of its full context, which make_targets cannot see)
    k, t = 2, 8
    starts = torch.tensor([0])
    got = falcon.stream_targets(data, starts, t, k, "cpu")
    windows = torch.stack([data["tokens"][s:s + t + 1] for s in starts.tolist()])
    want = falcon.make_targets(model, windows, k)
    for key in ("input_ids", "glance_ids", "loss_mask"):
        assert torch.equal(got[key], want[key]), key
    assert torch.equal(got["labels"][got["loss_mask"]], want["labels"][want["loss_mask"]])
    torch.testing.assert_close(got["features"], want["features"], atol=2e-3, rtol=2e-3)


def test_frequent_tokens_rank_answers_and_keep_stop_tokens(base):
    model, tok = base
    pairs = [([1], [7, 7, 7, 9, 9, 11]), ([2], [9, 7])]
    ids = distill.frequent_tokens("stdlib-ar", 3, pairs, tok, corpus_bytes=0, always=[0])
    assert ids == [0, 7, 9]
    assert distill.coverage(ids, pairs) == 7 / 8
    with pytest.raises(ValueError, match="size"):
        distill.frequent_tokens("stdlib-ar", 0, pairs, tok)


def test_gguf_models_default_to_the_smollm2_presets():
    from leapdec.train import falcon, medusa

    for recipe in (medusa, falcon):
        assert recipe.default_preset("smollm2-135m-instruct") == "smollm2"
        assert recipe.default_preset("stdlib-ar") == "default"
        assert recipe.PRESETS["smollm2"].data == "distill" and recipe.PRESETS["smollm2"].draft_vocab


# ----------------------------------------------------------------------------- sequence-level distillation

ANSWER = '''Here is the function:

```python
import os

def is_empty(path):
    """Tell whether the file is empty."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    return False

print(is_empty("x"))
```

It uses `os.path.getsize`.'''


def test_answer_body_is_the_requested_functions_statements():
    body = distill.answer_body(ANSWER, "is_empty")
    # the answer's own docstring is dropped (the prompt has one); 4-space layout, first line's
    # indentation in the prompt; the statement after the function is not part of it
    assert body == ("size = os.path.getsize(path)\n    if size == 0:\n        return True\n"
                    "    return False\n")
    prompt = distill.request_prompt("is_empty(path)", "tell whether the file is empty.")
    assert prompt == 'def is_empty(path):\n    """Tell whether the file is empty."""\n    '
    assert distill._parses(prompt + body)
    # the prompt has the layout of the corpus' own prompts: the body's indentation ends it
    fn = __import__("leapdec.train.corpus", fromlist=["x"]).function_prompts(prompt + body)[0]
    assert (fn.prompt, fn.reference) == (prompt, body)


@pytest.mark.parametrize("answer, why", [
    (ANSWER, "another name"),
    (ANSWER.replace("```\n\nIt uses", "IT USES").split("print(")[0], "cut off inside the function"),
    ('```python\ndef is_empty(path):\n    """Doc."""\n    pass\n```', "only pass"),
    ('```python\ndef is_empty(path):\n    ...\n```', "only ..."),
    ('```python\ndef is_empty(path):\n    """Only a docstring."""\n```', "only a docstring"),
    ('```python\ndef is_empty(path):\n' + '    x = 1\n' * 4 + '    return x\n```', "a looping answer"),
    ('```python\ndef is_empty(path):\n    return (\n```', "does not parse"),
    ('def is_empty(path):\n    return 1\n', "no code block"),
])
def test_answer_body_rejects(answer, why):
    name = "is_full" if why == "another name" else "is_empty"
    if why == "cut off inside the function":
        answer = answer.split("    return False")[0]      # the answer stopped mid-function
    assert distill.answer_body(answer, name) is None, why


def test_answer_body_finds_the_function_in_a_later_block_and_reindents():
    answer = ("```python\nx = 1\n```\nthen\n```python\nclass A:\n  def f(self, n):\n    for i in range(n):\n"
              "      yield i\n```")
    assert distill.answer_body(answer, "f") == "for i in range(n):\n        yield i\n"
