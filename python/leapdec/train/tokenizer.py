"""Byte-level BPE tokenizer trained with ``tokenizers`` on the corpus's train split.

Special tokens come first, with fixed ids: ``<|endoftext|>`` = 0 (EOS, and the BOS a prompt
starts with), ``<|mask|>`` = 1 (the diffusion mask), ``<|pad|>`` = 2. The full 256-byte alphabet
is in the vocabulary, so every text encodes and ``decode(encode(x)) == x``. Saved as a standard
Hugging Face ``tokenizer.json`` plus ``tokenizer_config.json`` and ``special_tokens_map.json``,
which ``transformers.AutoTokenizer`` loads.

    python -m leapdec.train.tokenizer --preset tiny --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, PAD_TOKEN)

# vocab_size and the corpus slice (UTF-8 bytes of the train split; None = all of it).
PRESETS = {
    "tiny": dict(vocab_size=512, max_bytes=300_000),
    "default": dict(vocab_size=4096, max_bytes=None),
}


def train_tokenizer(vocab_size: int = 4096, texts: Iterable[str] | None = None,
                    files: Iterable[str | os.PathLike] | None = None,
                    special_tokens: Iterable[str] = SPECIAL_TOKENS, min_frequency: int = 2,
                    max_bytes: int | None = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` or ``files``; with neither, on the corpus's
    train split (cut to ``max_bytes``). Special tokens get ids ``0..len(special_tokens)-1``."""
    special_tokens = list(special_tokens)
    if texts is not None and files is not None:
        raise ValueError("texts, files: give one of them, not both")
    base = len(special_tokens) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < base:
        raise ValueError(f"vocab_size must be at least {base} (special tokens + 256 bytes), "
                         f"got {vocab_size}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens: duplicates in {special_tokens}")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    if files is not None:
        paths = [str(Path(f)) for f in files]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"files: not found: {missing[:3]}")
        tok.train(paths, trainer)
    else:
        if texts is None:
            from leapdec.train.corpus import read_corpus
            texts = read_corpus("train", max_bytes=max_bytes)
        tok.train_from_iterator(texts, trainer)
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """``dict(eos=, mask=, pad=)``: ids of the special tokens."""
    ids = {}
    for key, token in (("eos", EOS_TOKEN), ("mask", MASK_TOKEN), ("pad", PAD_TOKEN)):
        tid = tok.token_to_id(token)
        if tid is None:
            raise ValueError(f"tok: has no {token} token")
        ids[key] = tid
    return ids


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON: identifies it in cards and caches."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike,
                   model_max_length: int = 1 << 30) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``
    into ``directory`` (created if needed); returns the ``tokenizer.json`` path."""
    ids = special_token_ids(tok)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    special_map = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
                   "pad_token": PAD_TOKEN, "mask_token": MASK_TOKEN}
    added = {str(tid): {"content": token, "lstrip": False, "normalized": False,
                        "rstrip": False, "single_word": False, "special": True}
             for token, tid in ((EOS_TOKEN, ids["eos"]), (MASK_TOKEN, ids["mask"]),
                                (PAD_TOKEN, ids["pad"]))}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
              "added_tokens_decoder": added, **special_map}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` file or a folder holding one (a zoo
    model that shares another's tokenizer finds it through ``leapdec.zoo.tokenizer_dir``)."""
    path = Path(path)
    if path.is_dir() and not (path / "tokenizer.json").is_file() and (path / "config.json").is_file():
        from leapdec.zoo import tokenizer_dir

        path = tokenizer_dir(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"path: no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write into")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--vocab-size", type=int, help="overrides the preset")
    parser.add_argument("--max-bytes", type=int, help="train-split bytes; overrides the preset")
    args = parser.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    if args.vocab_size is not None:
        cfg["vocab_size"] = args.vocab_size
    if args.max_bytes is not None:
        cfg["max_bytes"] = args.max_bytes
    start = time.perf_counter()
    tok = train_tokenizer(**cfg)
    path = save_tokenizer(tok, args.out)
    print(f"{path}: vocab {tok.get_vocab_size()}, {cfg}, "
          f"{time.perf_counter() - start:.1f} s, sha256 {tokenizer_hash(tok)[:16]}")


if __name__ == "__main__":
    main()
