"""The training corpus: the Python standard library's own source, present on every machine.

Files are the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, minus test folders,
``site-packages`` and build-specific files. A stable hash of each file's relative path puts 2 %
of them in a held-out split; held-out files give the evaluation prompts (a function's signature
and docstring; the model continues the body).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
import random
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import torch

SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.02
# Bump when the selection or the stream layout changes, so cached streams are rebuilt.
CORPUS_VERSION = 1

# Folders that are never standard-library source.
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "lib-dynload"}


def stdlib_root() -> Path:
    """The folder holding this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_test_component(name: str) -> bool:
    """True for a path component that names test code: ``test``, ``tests``, ``test_*``,
    ``*_test`` or ``*_tests`` (``idle_test``); ``unittest`` and ``doctest`` stay in."""
    stem = name[:-3] if name.endswith(".py") else name
    return (stem in ("test", "tests") or stem.startswith("test_")
            or stem.endswith("_test") or stem.endswith("_tests"))


def is_excluded(relpath: str) -> bool:
    """Whether a stdlib-relative posix path is left out of the corpus entirely."""
    parts = relpath.split("/")
    if any(p in _EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
        return True
    if parts[-1].startswith("_sysconfigdata"):  # build flags of this machine, not source
        return True
    return any(is_test_component(p) for p in parts)


def split_of(relpath: str) -> str:
    """``"heldout"`` for a stable 2 % of paths (SHA-1 of the relative path), else ``"train"``."""
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64
    return "heldout" if fraction < HELDOUT_FRACTION else "train"


def _sample_key(relpath: str) -> bytes:
    """A stable pseudo-random order, so any prefix of the corpus is a mixed sample."""
    return hashlib.sha1(b"order:" + relpath.encode("utf-8")).digest()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _all_relpaths(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        # Prune excluded folders early (site-packages alone can hold tens of thousands of files).
        dirnames[:] = sorted(d for d in dirnames if not is_excluded(f"{prefix}{d}/x.py"))
        found += [prefix + name for name in filenames
                  if name.endswith(".py") and not is_excluded(prefix + name)]
    return sorted(found)


def corpus_files(split: str = "train", root: str | os.PathLike | None = None) -> list[Path]:
    """Absolute paths of the corpus files of ``split`` (``"train"`` or ``"heldout"``), sorted."""
    _check_split(split)
    root = Path(root).resolve() if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"root: stdlib folder {root} does not exist")
    return [root / rel for rel in _all_relpaths(root) if split_of(rel) == split]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _ordered(paths: Sequence[Path], root: Path) -> list[Path]:
    return sorted(paths, key=lambda p: _sample_key(p.relative_to(root).as_posix()))


def read_corpus(split: str = "train", max_bytes: int | None = None,
                root: str | os.PathLike | None = None) -> list[str]:
    """Texts of the split's files in a stable mixed order; files that are not UTF-8 are skipped.

    With ``max_bytes`` (UTF-8 bytes) whole files are taken while they fit and the next one is
    cut at a line end, so the result is a deterministic sample of at most ``max_bytes``."""
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
    root = Path(root).resolve() if root is not None else stdlib_root()
    texts, total = [], 0
    for path in _ordered(corpus_files(split, root), root):
        text = _read_text(path)
        if text is None:
            continue
        if max_bytes is not None:
            data = text.encode("utf-8")
            if total + len(data) > max_bytes:
                head = data[:max_bytes - total]
                cut = head.rfind(b"\n") + 1
                if cut > 0:
                    texts.append(head[:cut].decode("utf-8"))
                break
            total += len(data)
        texts.append(text)
    return texts


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What a model card records about the corpus."""
    stdlib: str
    python_version: str
    heldout_fraction: float
    train_files: int
    train_bytes: int
    heldout_files: int
    heldout_bytes: int
    skipped_files: int  # not valid UTF-8
    fingerprint: str    # SHA-256 over (relative path, content) of every file used

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def corpus_info(root: str | os.PathLike | None = None) -> CorpusInfo:
    """Counts, sizes and a content fingerprint of both splits."""
    root = Path(root).resolve() if root is not None else stdlib_root()
    counts = {s: [0, 0] for s in SPLITS}
    skipped = 0
    fingerprint = hashlib.sha256()
    for split in SPLITS:
        for path in corpus_files(split, root):
            text = _read_text(path)
            if text is None:
                skipped += 1
                continue
            data = text.encode("utf-8")
            counts[split][0] += 1
            counts[split][1] += len(data)
            rel = path.relative_to(root).as_posix()
            fingerprint.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return CorpusInfo(
        stdlib=str(root), python_version=sys.version.split()[0],
        heldout_fraction=HELDOUT_FRACTION,
        train_files=counts["train"][0], train_bytes=counts["train"][1],
        heldout_files=counts["heldout"][0], heldout_bytes=counts["heldout"][1],
        skipped_files=skipped, fingerprint=fingerprint.hexdigest())


# ----------------------------------------------------------------------------- evaluation prompts

@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    """A function cut after its docstring: ``prompt + reference`` is the function's source."""
    path: str       # stdlib-relative path of the held-out file
    name: str       # function name
    lineno: int     # line of the ``def``
    prompt: str     # from the start of the ``def`` line through the docstring, the newline
                    # and the indentation of the first statement after it
    reference: str  # the rest of the function, through its last line's newline


def _char_offset(line_starts: list[int], lines: list[str], lineno: int, col_bytes: int) -> int:
    """Character offset of an ast (1-based line, UTF-8 byte column) position."""
    line = lines[lineno - 1]
    return line_starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode("utf-8"))


def function_prompts(source: str, path: str = "<string>",
                     max_prompt_chars: int | None = None) -> list[EvalPrompt]:
    """Every function of ``source`` that has a docstring followed by more statements."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    line_starts, offset = [], 0
    for line in lines:
        line_starts.append(offset)
        offset += len(line)
    prompts = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if ast.get_docstring(node, clean=False) is None or len(node.body) < 2:
            continue
        doc, first = node.body[0], node.body[1]
        if first.lineno == doc.end_lineno:  # `"""doc"""; x = 1`
            continue
        # The first line after the docstring that is not blank must be the first statement,
        # so the prompt ends in the body's indentation (a comment there could sit at column 0).
        next_line = doc.end_lineno + 1
        while next_line < first.lineno and not lines[next_line - 1].strip():
            next_line += 1
        if next_line != first.lineno:
            continue
        start = line_starts[node.lineno - 1]
        cut = _char_offset(line_starts, lines, first.lineno, first.col_offset)
        end_line = lines[node.end_lineno - 1]
        end = line_starts[node.end_lineno - 1] + len(end_line)
        prompt, reference = source[start:cut], source[cut:end]
        if not reference.endswith("\n"):
            reference += "\n"
        if max_prompt_chars is not None and len(prompt) > max_prompt_chars:
            continue
        prompts.append(EvalPrompt(path=path, name=node.name, lineno=node.lineno,
                                  prompt=prompt, reference=reference))
    return sorted(prompts, key=lambda p: p.lineno)


def eval_prompts(n: int, seed: int = 0, max_prompt_chars: int = 1024,
                 root: str | os.PathLike | None = None) -> list[EvalPrompt]:
    """``n`` prompts drawn (seeded, without replacement) from the held-out files' functions;
    fewer when the held-out split has fewer candidates."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    root = Path(root).resolve() if root is not None else stdlib_root()
    candidates = []
    for path in corpus_files("heldout", root):
        text = _read_text(path)
        if text is not None:
            candidates += function_prompts(text, path.relative_to(root).as_posix(),
                                           max_prompt_chars)
    rng = random.Random(seed)
    return rng.sample(candidates, min(n, len(candidates)))


# ----------------------------------------------------------------------------- token streams

def cache_dir() -> Path:
    """Where encoded streams are cached: ``$LEAPDEC_CACHE_DIR`` or ``~/.cache/leapdec``."""
    return Path(os.environ.get("LEAPDEC_CACHE_DIR", Path.home() / ".cache" / "leapdec"))


def _eos_id(tokenizer) -> int:
    eos = tokenizer.token_to_id("<|endoftext|>")
    if eos is None:
        raise ValueError("tokenizer: has no <|endoftext|> token")
    return eos


def _encode_texts(tokenizer, texts: list[str], eos: int, max_tokens: int | None) -> torch.Tensor:
    ids: list[int] = []
    chunk = 64
    for i in range(0, len(texts), chunk):
        for enc in tokenizer.encode_batch(texts[i:i + chunk], add_special_tokens=False):
            ids.append(eos)
            ids.extend(enc.ids)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)


def encode_corpus(tokenizer, split: str = "train", max_tokens: int | None = None,
                  max_bytes: int | None = None, cache: bool = True,
                  root: str | os.PathLike | None = None) -> torch.Tensor:
    """The split as one ``LongTensor`` token stream: every file is preceded by
    ``<|endoftext|>`` (the file separator, and the BOS a prompt starts with).

    Streams are cached under :func:`cache_dir`, keyed by the tokenizer's JSON, the corpus
    content and the arguments; a missing, unwritable or corrupt cache is simply rebuilt."""
    if max_tokens is not None and max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    eos = _eos_id(tokenizer)
    texts = read_corpus(split, max_bytes=max_bytes, root=root)
    if not texts:
        raise ValueError(f"split: {split!r} has no files")
    if not cache:
        return _encode_texts(tokenizer, texts, eos, max_tokens)

    key = hashlib.sha256()
    key.update(f"v{CORPUS_VERSION}|{split}|{max_tokens}|{max_bytes}|".encode())
    key.update(hashlib.sha256(tokenizer.to_str().encode("utf-8")).digest())
    for text in texts:
        key.update(hashlib.sha256(text.encode("utf-8")).digest())
    path = cache_dir() / f"stream-{split}-{key.hexdigest()[:32]}.pt"
    try:
        stream = torch.load(path, weights_only=True)
        if isinstance(stream, torch.Tensor) and stream.dim() == 1:
            return stream.long()
    except Exception:  # missing or unreadable: rebuild below
        pass
    stream = _encode_texts(tokenizer, texts, eos, max_tokens)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:  # unwritable cache folder: work without the cache
        return stream
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(stream.to(torch.int32), f)
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return stream


def batches(stream: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
            num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Random contiguous windows of ``stream``: ``LongTensor [batch_size, seq_len + 1]``
    (inputs ``[:, :-1]``, targets ``[:, 1:]``); endless unless ``num_batches`` is given."""
    if not isinstance(stream, torch.Tensor) or stream.dim() != 1:
        raise ValueError("stream: expected a 1-D token tensor")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    n_starts = stream.numel() - seq_len
    if n_starts <= 0:
        raise ValueError(f"stream: {stream.numel()} tokens is too short for seq_len {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)
    count = 0
    while num_batches is None or count < num_batches:
        starts = torch.randint(0, n_starts, (batch_size,), generator=gen)
        yield stream[starts[:, None] + offsets].long()
        count += 1
