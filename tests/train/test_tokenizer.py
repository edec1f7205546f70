import json

import pytest

from leapdec.train import corpus as C
from leapdec.train import tokenizer as T

TRICKY = ("def f(x):\n    '''héllo — 日本語 🐍 \u200b'''\r\n\treturn  x  \n\n\n"
          "s = '\\x00\\n' + \"\x00\x7f\" # trailing   \n\u00a0\u2028end")


@pytest.fixture(scope="module")
def tiny_tok():
    return T.train_tokenizer(**T.PRESETS["tiny"])


def test_special_tokens_have_stable_ids(tiny_tok):
    assert T.special_token_ids(tiny_tok) == dict(eos=0, mask=1, pad=2)
    assert tiny_tok.get_vocab_size() == 512
    other = T.train_tokenizer(vocab_size=300, texts=["x = 1\n" * 50, "def f():\n    pass\n"])
    assert T.special_token_ids(other) == dict(eos=0, mask=1, pad=2)
    # Special tokens in text are matched as one token each.
    assert tiny_tok.encode("a<|mask|>b").ids[1] == 1


def test_training_is_deterministic(tiny_tok):
    again = T.train_tokenizer(**T.PRESETS["tiny"])
    assert again.to_str() == tiny_tok.to_str()
    assert T.tokenizer_hash(again) == T.tokenizer_hash(tiny_tok)


def test_round_trip_on_stdlib_files(tiny_tok):
    files = C.corpus_files("train") + C.corpus_files("heldout")
    texts = [p.read_text(encoding="utf-8") for p in files]
    non_ascii = [t for t in texts if not t.isascii()]
    assert len(non_ascii) >= 5
    sample = non_ascii + texts[::25]
    for enc, text in zip(tiny_tok.encode_batch(sample, add_special_tokens=False), sample):
        assert tiny_tok.decode(enc.ids) == text
    assert tiny_tok.decode(tiny_tok.encode(TRICKY).ids) == TRICKY
    # A bigger vocabulary compresses: about 3+ bytes per token on held-out code.
    tok = T.train_tokenizer(vocab_size=2048, max_bytes=2_000_000)
    heldout = "".join(C.read_corpus("heldout"))
    ids = tok.encode(heldout).ids
    assert tok.decode(ids) == heldout
    assert len(heldout.encode("utf-8")) / len(ids) > 3.0


def test_save_and_load(tiny_tok, tmp_path):
    path = T.save_tokenizer(tiny_tok, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "tokenizer.json"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "ckpt" / name).is_file()
    config = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["mask_token"] == "<|mask|>"
    for where in (tmp_path / "ckpt", path, str(path)):
        loaded = T.load_tokenizer(where)
        assert loaded.to_str() == tiny_tok.to_str()
        assert loaded.encode(TRICKY).ids == tiny_tok.encode(TRICKY).ids
    with pytest.raises(FileNotFoundError, match="path"):
        T.load_tokenizer(tmp_path / "nowhere")


def test_transformers_loads_it(tiny_tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    T.save_tokenizer(tiny_tok, tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (auto.eos_token_id, auto.mask_token_id, auto.pad_token_id) == (0, 1, 2)
    assert auto.bos_token_id == 0
    ids = auto(TRICKY)["input_ids"]
    assert ids == tiny_tok.encode(TRICKY).ids
    assert auto.decode(ids) == TRICKY
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(TRICKY)["input_ids"] == ids


def test_train_from_files(tmp_path):
    paths = []
    for i, text in enumerate(C.read_corpus("train", max_bytes=30_000)[:5]):
        paths.append(tmp_path / f"f{i}.py")
        paths[-1].write_text(text, encoding="utf-8")
    tok = T.train_tokenizer(vocab_size=320, files=paths)
    assert tok.get_vocab_size() == 320
    assert tok.decode(tok.encode(TRICKY).ids) == TRICKY


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_tokenizer(vocab_size=100, texts=["x"])
    with pytest.raises(ValueError, match="texts, files"):
        T.train_tokenizer(vocab_size=300, texts=["x"], files=["y"])
    with pytest.raises(FileNotFoundError, match="files"):
        T.train_tokenizer(vocab_size=300, files=["/nonexistent/file.py"])
    with pytest.raises(ValueError, match="special_tokens"):
        T.train_tokenizer(vocab_size=300, texts=["x"], special_tokens=["<a>", "<a>"])
    bare = T.train_tokenizer(vocab_size=300, texts=["x"], special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="<\\|mask\\|>"):
        T.special_token_ids(bare)


def test_cli_tiny_preset(tmp_path, capsys):
    T.main(["--preset", "tiny", "--out", str(tmp_path), "--vocab-size", "400"])
    assert "vocab 400" in capsys.readouterr().out
    assert T.load_tokenizer(tmp_path).get_vocab_size() == 400
