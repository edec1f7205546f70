"""GGUF files (llama.cpp's format): a Llama / Qwen2 / Qwen3 model, its tokenizer and chat template.

Everything is read with the ``gguf`` package (``pip install gguf``): the metadata gives the
``ModelConfig``, the tensors are dequantized with ``gguf.quants.dequantize`` (F32, F16, BF16,
Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) into a float ``Transformer``, and the vocabulary/merges/special
tokens become a ``tokenizers.Tokenizer`` built the way ``transformers``' GGUF tokenizer converter
builds it, so token ids agree with ``AutoTokenizer.from_pretrained(folder, gguf_file=...)``.

llama.cpp's converter permutes the rows of a Llama model's ``attn_q``/``attn_k`` weights (its
RoPE pairs interleaved dimensions, Hugging Face's rotates halves); loading undoes it, exactly as
``transformers``' GGUF loader does. Qwen2/Qwen3 files are written without that permutation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from leapdec.models.config import ConfigError, ModelConfig
from leapdec.models.loading import resolve_dtype
from leapdec.models.transformer import Transformer

ARCHITECTURES = ("llama", "qwen2", "qwen3")
# tensor types dequantized with gguf's own routines (any other is an error naming the tensor)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
# GGUF per-layer tensor name -> Transformer parameter name (``blk.{i}.`` -> ``layers.{i}.``)
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A GGUF file leapdec cannot load (names the file and the problem: a tensor, a type, a key)."""


def _require_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package: pip install gguf "
                          "(or pip install 'leapdec[gguf]')") from None
    return gguf


def is_gguf_file(path) -> bool:
    """True for an existing file that starts with the GGUF magic bytes."""
    try:
        p = Path(path).expanduser()
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(4) == _MAGIC
    except (OSError, TypeError):
        return False


@functools.lru_cache(maxsize=2)
def _open(path: str, size: int, mtime_ns: int):
    """A ``gguf.GGUFReader`` of ``path`` (cached per file version: reading the metadata of a
    50k-token vocabulary takes seconds), after checking that no tensor runs past the file's end."""
    gguf = _require_gguf()
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it starts with {magic!r}, not {_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001  (gguf raises ValueError, IndexError, struct errors ...)
        raise GGUFError(f"{path} is not a readable GGUF file (truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from None
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise GGUFError(f"{path} is truncated: tensor {t.name!r} needs bytes up to {end} "
                            f"but the file has {size}")
    return reader


def open_gguf(path):
    """The ``gguf.GGUFReader`` of a GGUF file (``GGUFError`` when it is not a valid one)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {p} does not exist")
    st = p.stat()
    return _open(str(p.resolve()), st.st_size, st.st_mtime_ns)


def metadata(path_or_reader, key: str, default=None):
    """One metadata value (str, number, bool or list) of a GGUF file, ``default`` when absent."""
    reader = open_gguf(path_or_reader) if isinstance(path_or_reader, (str, Path)) else path_or_reader
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _architecture(reader, path) -> str:
    arch = metadata(reader, "general.architecture")
    if arch is None:
        raise GGUFError(f"{path}: metadata key 'general.architecture' is missing")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported "
                        f"(supported: {', '.join(ARCHITECTURES)})")
    return arch


def config_from_gguf(path_or_reader, path=None) -> ModelConfig:
    """The ``ModelConfig`` a GGUF file's metadata describes (Llama, Qwen2, Qwen3)."""
    reader = open_gguf(path_or_reader) if isinstance(path_or_reader, (str, Path)) else path_or_reader
    if path is None:
        path = path_or_reader if isinstance(path_or_reader, (str, Path)) else "GGUF file"
    arch = _architecture(reader, path)
    tensors = {t.name: t for t in reader.tensors}

    def key(name, default=None, required=False):
        value = metadata(reader, f"{arch}.{name}", default)
        if required and value is None:
            raise GGUFError(f"{path}: metadata key '{arch}.{name}' is missing")
        return value

    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
    hidden = key("embedding_length", required=True)
    heads = key("attention.head_count", required=True)
    kv_heads = key("attention.head_count_kv", heads)
    if isinstance(heads, list) or isinstance(kv_heads, list):
        raise GGUFError(f"{path}: per-layer head counts are not supported")
    head_dim = key("attention.key_length") or (key("rope.dimension_count") if arch == "llama" else None)
    if head_dim is None:
        head_dim = hidden // heads
    vocab = int(tensors["token_embd.weight"].shape[-1])
    scaling = None
    kind = key("rope.scaling.type")
    if kind not in (None, "none"):
        if kind != "linear":
            raise GGUFError(f"{path}: RoPE scaling {kind!r} is not supported (supported: none, linear)")
        scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor", required=True))}
    if "rope_freqs.weight" in tensors:
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' (llama3-style RoPE frequency factors) "
                        f"is not supported")
    bias = "blk.0.attn_q.bias" in tensors and arch == "llama"

    def tok_id(name):
        value = metadata(reader, f"tokenizer.ggml.{name}")
        return value if isinstance(value, int) and 0 <= value < vocab else None

    try:
        return ModelConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=key("feed_forward_length", required=True),
            num_hidden_layers=key("block_count", required=True),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            model_type=arch,
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            max_position_embeddings=key("context_length", 2048),
            tie_word_embeddings="output.weight" not in tensors,
            attention_bias=bias,
            bos_token_id=tok_id("bos_token_id"),
            eos_token_id=tok_id("eos_token_id"),
            pad_token_id=tok_id("padding_token_id"),
        )
    except ConfigError as e:
        raise GGUFError(f"{path}: {e}") from None


def _our_name(gguf_name: str) -> str | None:
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Llama Q/K row permutation (rows grouped per head as ``[2, D/2]`` pairs ->
    Hugging Face's rotate-half order), on a weight ``[rows, in]`` or a bias ``[rows]``."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize_tensor(tensor, path="GGUF file") -> np.ndarray:
    """A ``gguf`` ``ReaderTensor`` as float32 numpy in PyTorch's layout (``[out, in]``)."""
    gguf = _require_gguf()
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise GGUFError(f"{path}: tensor {tensor.name!r} has type {kind}, which leapdec does not load "
                        f"(supported: {', '.join(SUPPORTED_TYPES)})")
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(data, dtype=np.float32).reshape(shape)


def load_gguf(path, device="cpu", dtype=None, checkpoint_dir=None) -> Transformer:
    """A ``Transformer`` from a GGUF file, dequantized to ``dtype`` (default float32).

    ``checkpoint_dir``: where the model's companions (Medusa heads, drafters) are looked up;
    default ``<folder>/<file stem>/`` beside the file. Raises ``GGUFError`` naming the problem
    (unsupported architecture or tensor type, missing/unexpected tensor, truncated file).
    """
    path = Path(path).expanduser()
    reader = open_gguf(path)
    config = config_from_gguf(reader, path)
    device = torch.device(device)
    target = resolve_dtype(dtype, torch.float32, device)      # dequantized weights are float32
    model = Transformer(config, device="meta", init_std=None)
    expected = dict(model.named_parameters())
    permute = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    state = {}
    for t in reader.tensors:                  # names and types first: fail before any work
        name = _our_name(t.name)
        if name is None or name not in expected:
            raise GGUFError(f"{path}: tensor {t.name!r} is not part of a {config.model_type} model "
                            f"with this metadata")
        if t.tensor_type.name not in SUPPORTED_TYPES:
            dequantize_tensor(t, path)        # raises the error naming the tensor and its type
    present = {_our_name(t.name) for t in reader.tensors}
    missing = [n for n in expected if n not in present]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise GGUFError(f"{path}: tensor(s) for {', '.join(missing[:5])}{more} are missing")
    for t in reader.tensors:
        name = _our_name(t.name)
        state[name] = _to_torch(dequantize_tensor(t, path), t.name, name, expected, config, permute,
                                path, device, target)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else path.resolve().parent / path.stem
    model.gguf_path = path.resolve()
    return model.eval()


def _to_torch(w, gguf_name, name, expected, config, permute, path, device, target) -> torch.Tensor:
    want = tuple(expected[name].shape)
    if w.shape != want:
        raise GGUFError(f"{path}: tensor {gguf_name!r} has shape {w.shape}, the metadata implies {want}")
    if config.model_type == "llama":
        proj = name.split(".")[-2]
        if proj in permute:
            w = unpermute_qk(w, permute[proj])
    if not w.flags.writeable:                 # a view of the memory-mapped file (F32 tensors)
        w = w.copy()
    return torch.from_numpy(np.ascontiguousarray(w)).to(device=device, dtype=target)


# ---------------------------------------------------------------------------------- tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of byte-level BPE vocabularies)."""
    # printable latin-1 bytes stand for themselves, the others for chr(256 + n) in byte order
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


# pre-tokenizer splits by ``tokenizer.ggml.pre`` (the regexes of the tokenizers these names denote)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4


def _merges(values) -> list[tuple[str, str]]:
    out = []
    for m in values:
        a, sep, b = m.partition(" ")
        if not sep:
            raise GGUFError(f"merge {m!r} is not two tokens separated by a space")
        out.append((a, b))
    return out


def load_gguf_tokenizer(path):
    """The ``tokenizers.Tokenizer`` a GGUF file describes (``tokenizer.ggml.model`` "gpt2":
    byte-level BPE; "llama": sentencepiece-style BPE with byte fallback), with its control tokens
    as special tokens and its user-defined tokens as added tokens, like ``transformers``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    path = Path(path).expanduser()
    reader = open_gguf(path)
    kind = metadata(reader, "tokenizer.ggml.model")
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise GGUFError(f"{path}: no tokenizer in the metadata (tokenizer.ggml.model/tokens missing)")
    types = metadata(reader, "tokenizer.ggml.token_type") or []
    merges = metadata(reader, "tokenizer.ggml.merges")
    if kind == "gpt2":
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab = {(tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))): i
                 for i, tok in enumerate(tokens)}
        if merges is None:
            raise GGUFError(f"{path}: a byte-level ('gpt2') tokenizer needs tokenizer.ggml.merges")
        tk = Tokenizer(models.BPE(vocab=vocab, merges=_merges(merges), dropout=None,
                                  continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
        split = _SPLITS.get(metadata(reader, "tokenizer.ggml.pre"))
        if split is None:
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                        pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                 use_regex=False)])
        tk.decoder = decoders.ByteLevel()
        control_ok = alphabet
    elif kind == "llama":
        vocab = {tok: i for i, tok in enumerate(tokens)}
        if merges is None:
            merges = _sentencepiece_merges(tokens, metadata(reader, "tokenizer.ggml.scores"), path)
        else:
            merges = _merges(merges)
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        prefix = metadata(reader, "tokenizer.ggml.add_space_prefix", True)
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                    split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if prefix:
            steps.append(decoders.Strip(content=" ", left=1))
        tk.decoder = decoders.Sequence(steps)
        control_ok = None
    else:
        raise GGUFError(f"{path}: tokenizer model {kind!r} is not supported (supported: gpt2, llama)")

    special = [AddedToken(tok, normalized=False, special=True) for tok, ty in zip(tokens, types)
               if ty == _CONTROL and (control_ok is None or set(tok) <= control_ok)]
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):   # as transformers
        i = metadata(reader, f"tokenizer.ggml.{key}")
        if isinstance(i, int) and 0 <= i < len(tokens) and tokens[i] not in {t.content for t in special}:
            special.append(AddedToken(tokens[i], normalized=False, special=True))
    if special:
        tk.add_special_tokens(special)
    user = [AddedToken(tok, normalized=False, special=False) for tok, ty in zip(tokens, types)
            if ty == _USER_DEFINED and tok in vocab]
    if user:
        tk.add_tokens(user)
    add_bos = metadata(reader, "tokenizer.ggml.add_bos_token", kind == "llama")
    bos_id = metadata(reader, "tokenizer.ggml.bos_token_id")
    if add_bos and isinstance(bos_id, int) and 0 <= bos_id < len(tokens):
        bos = tokens[bos_id]
        tk.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                                          special_tokens=[(bos, bos_id)])
    return tk


def _sentencepiece_merges(tokens, scores, path) -> list[tuple[str, str]]:
    """Merges implied by a sentencepiece vocabulary that lists none: every split of a token into
    two vocabulary tokens, best merged-token score first (ties: longer left, then longer right
    piece; then vocabulary order) -- the order ``transformers`` derives for such files."""
    if scores is None:
        raise GGUFError(f"{path}: a sentencepiece ('llama') tokenizer needs tokenizer.ggml.merges or .scores")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    found = []
    for tok, score in dict(zip(tokens, scores)).items():
        local = [(tok[:k], tok[k:]) for k in range(1, len(tok)) if tok[:k] in vocab and tok[k:] in vocab]
        local.sort(key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
        found.extend((a, b, score) for a, b in local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def gguf_chat_template(path) -> str | None:
    """The Jinja chat template stored in a GGUF file's metadata (``tokenizer.chat_template``)."""
    return metadata(Path(path), "tokenizer.chat_template")


def gguf_special_tokens(path) -> dict[str, str | None]:
    """``bos_token``, ``eos_token``, ``unk_token``, ``pad_token`` strings of a GGUF file."""
    reader = open_gguf(path)
    tokens = metadata(reader, "tokenizer.ggml.tokens") or []
    out = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        i = metadata(reader, f"tokenizer.ggml.{key}")
        out[name] = tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None
    return out


def file_sha256(path, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


__all__ = ["ARCHITECTURES", "GGUFError", "SUPPORTED_TYPES", "config_from_gguf", "dequantize_tensor",
           "file_sha256", "gguf_chat_template", "gguf_special_tokens", "is_gguf_file", "load_gguf",
           "load_gguf_tokenizer", "metadata", "open_gguf", "unpermute_qk"]
