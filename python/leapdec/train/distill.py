"""Self-distillation data: instruction prompts from the stdlib corpus and a base model's own greedy
answers to them, shared by the recipes that train companions of a base model (Medusa heads,
Falcon / draft models).

Prompts come from the functions of the corpus split (``train`` or ``heldout``; held-out stays held
out) that have a one-line docstring summary. For a chat model (its GGUF metadata or checkpoint has
a chat template, e.g. ``smollm2-135m-instruct``) a prompt is the chat template applied to

    Write a Python function `name(args)` that <docstring summary>.

and for a plain LM (``stdlib-ar``) it is ``<|endoftext|>`` + the function's signature and docstring
(like ``corpus.eval_prompts``). The answers are ``generate(method="ar")`` greedy continuations that
stop at the model's stop tokens (eos, and for a chat model the end-of-turn token); an answer that
stopped ends with the stop token it emitted, so it is exactly what the base model said.

Results are cached under ``corpus.cache_dir()/distill/``, keyed by (base, checkpoint hash, split,
max_new_tokens, seed, prompt format); prompts are a seeded shuffle of the split's functions, so the
first n pairs of a larger set are the n-pair set, and a cached set serves any smaller n (a larger n
generates only the missing pairs, and progress is saved every batch, so an interrupted run resumes).

    >>> from leapdec.train import distill
    >>> pairs = distill.answers("smollm2-135m-instruct", 600)   # [(prompt_ids, answer_ids), ...]
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import random
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from leapdec.train import corpus

# Bump when the prompt selection, the prompt format or the answer rule changes.
DISTILL_VERSION = 1
CHAT_INSTRUCTION = "Write a Python function `{signature}` that {summary}"
MAX_SUMMARY_CHARS = 160
MAX_SIGNATURE_CHARS = 100


# ----------------------------------------------------------------------------- prompts

def _summary(doc: str) -> str | None:
    """The docstring's first sentence (of its first paragraph, lines joined) as the end of a
    sentence ("Return x." -> "return x.")."""
    paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
    line = paragraph.split(". ", 1)[0].strip()
    if not (10 <= len(line) <= MAX_SUMMARY_CHARS) or not line[0].isalpha():
        return None
    if not line[1:2].isupper():            # keep acronyms ("URL ...") as they are
        line = line[0].lower() + line[1:]
    return line if line.endswith((".", "?", "!")) else line + "."


def _function_request(prompt: str) -> tuple[str, str] | None:
    """``(signature, summary)`` of an ``EvalPrompt.prompt`` (def line(s) + docstring), or None when
    it does not make a clean one-line request."""
    try:
        tree = ast.parse(textwrap.dedent(prompt) + "pass\n")
    except (SyntaxError, ValueError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    doc = ast.get_docstring(node)
    summary = _summary(doc) if doc else None
    if summary is None:
        return None
    args = node.args
    positional = args.posonlyargs or args.args
    if positional and positional[0].arg in ("self", "cls"):
        positional.pop(0)
    signature = f"{node.name}({ast.unparse(args)})"
    if len(signature) > MAX_SIGNATURE_CHARS:
        return None
    return signature, summary


@functools.lru_cache(maxsize=4)
def _pool(split: str, root: str | None) -> tuple[tuple[str, str, str], ...]:
    """Every usable function of the split: ``(signature, summary, source prompt)``, in file order,
    public functions only, one per distinct (signature, summary); the train split leaves out the
    requests the held-out split makes (files that repeat a function)."""
    corpus._check_split(split)
    base = Path(root) if root is not None else corpus.stdlib_root()
    out, seen = [], set()
    if split != "heldout":       # a request that the held-out split also makes stays held out
        seen = {r[:2] for r in _pool("heldout", root)}
    for path in corpus.corpus_files(split, base):
        text = corpus._read_text(path)
        if text is None:
            continue
        for fn in corpus.function_prompts(text, path.relative_to(base).as_posix(), max_prompt_chars=1024):
            if fn.name.startswith("_"):
                continue
            request = _function_request(fn.prompt)
            if request is None or request in seen:
                continue
            seen.add(request)
            out.append((*request, fn.prompt))
    return tuple(out)


def requests(n: int, split: str = "train", seed: int = 0, root=None) -> list[tuple[str, str, str]]:
    """The first ``n`` of a seeded shuffle of the split's functions: ``(signature, summary, source
    prompt)``; fewer when the split has fewer."""
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    pool = list(_pool(split, str(root) if root is not None else None))
    random.Random(seed).shuffle(pool)
    return pool[:n]


def is_chat_model(base: str) -> bool:
    """Whether the base model has a chat template (then prompts are chat requests)."""
    from leapdec.chat import chat_template

    try:
        chat_template(base)
    except (ValueError, FileNotFoundError):
        return False
    return True


def prompt_ids(base: str, tokenizer, request: tuple[str, str, str], chat: bool) -> list[int]:
    """The token ids of one prompt (see the module docstring)."""
    signature, summary, source = request
    if chat:
        from leapdec.chat import apply_chat_template

        message = CHAT_INSTRUCTION.format(signature=signature, summary=summary)
        return apply_chat_template(base, [{"role": "user", "content": message}], tokenize=True,
                                   tokenizer=tokenizer)
    eos = tokenizer.token_to_id("<|endoftext|>")
    if eos is None:
        raise ValueError(f"base: {base}'s tokenizer has no <|endoftext|> to start a plain prompt with")
    return [eos] + tokenizer.encode(source, add_special_tokens=False).ids


# ----------------------------------------------------------------------------- answers

def checkpoint_hash(base: str) -> str:
    """SHA-256 of the base model's weights file (the GGUF file, or ``model.safetensors``)."""
    from leapdec import zoo
    from leapdec.api import _gguf_source

    source = _gguf_source(base)
    path = source[0] if source is not None else zoo.resolve(base) / "model.safetensors"
    return _cached_sha256(str(Path(path).resolve()), os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_sha256(path: str, mtime_ns: int) -> str:
    from leapdec.train import cards

    return cards.file_sha256(path)


def cache_path(base: str, split: str, max_new_tokens: int, seed: int) -> Path:
    """The cache file of (base, checkpoint hash, split, max_new_tokens, seed) for any n."""
    key = hashlib.sha256(json.dumps([DISTILL_VERSION, base, checkpoint_hash(base), split, max_new_tokens,
                                     seed, CHAT_INSTRUCTION]).encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(base)).name)
    return corpus.cache_dir() / "distill" / f"{safe}-{split}-{max_new_tokens}-{seed}-{key}.json"


def _read_cache(path: Path) -> list[tuple[list[int], list[int]]]:
    try:
        pairs = json.loads(path.read_text())["pairs"]
        return [(list(map(int, p)), list(map(int, a))) for p, a in pairs]
    except Exception:  # missing or unreadable: regenerate
        return []


def _write_cache(path: Path, pairs, meta: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:  # unwritable cache folder: work without the cache
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**meta, "pairs": pairs}, f, separators=(",", ":"))
        os.chmod(tmp, 0o644)   # a shared cache: readable by every user of the machine
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def answers(base: str, n: int, split: str = "train", max_new_tokens: int = 128, seed: int = 0,
            batch: int = 16, cache: bool = True, model=None, tokenizer=None, threads: int | None = None,
            progress: bool = True) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, answer_ids)`` pairs: instruction prompts built from the stdlib corpus split
    (``train`` or ``heldout``; held-out stays held out) and the base model's own greedy answers
    (``generate(method="ar")``, stopped at its eos / end-of-turn tokens; an answer that stopped
    ends with that stop token). For a chat model (``smollm2-135m-instruct``) the prompt is the chat
    template applied to "Write a Python function `name(args)` that <one-line docstring>."; for a
    plain LM (``stdlib-ar``) it is ``<|endoftext|>`` + the function's signature and docstring.

    ``n``: how many pairs (fewer when the split has fewer usable functions); ``batch``: prompts
    per generate call; ``model`` / ``tokenizer``: an already loaded base (else loaded here, fp32
    on CPU); ``threads``: torch threads while generating (default: unchanged).
    Cached on disk under ``corpus.cache_dir()/distill/`` (see the module docstring)."""
    if split not in corpus.SPLITS:
        raise ValueError(f"split must be one of {corpus.SPLITS}, got {split!r}")
    for name, value in (("n", n), ("max_new_tokens", max_new_tokens), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be positive, got {threads}")
    wanted = requests(n, split, seed)
    path = cache_path(base, split, max_new_tokens, seed) if cache else None
    pairs = _read_cache(path) if path is not None else []
    if len(pairs) >= len(wanted):
        return pairs[:len(wanted)]

    import leapdec
    from leapdec.chat import stop_tokens

    if model is None:
        model = leapdec.load_model(base, dtype=torch.float32)
    if tokenizer is None:
        tokenizer = leapdec.load_tokenizer(base)
    chat = is_chat_model(base)
    stops = stop_tokens(base, tokenizer, model) if chat else list(model.config.stop_token_ids)
    meta = {"version": DISTILL_VERSION, "base": str(base), "split": split, "seed": seed,
            "max_new_tokens": max_new_tokens, "chat": chat, "stop_tokens": stops}
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = tqdm(total=len(wanted), initial=len(pairs), disable=not progress,
               desc=f"distill {Path(str(base)).name}/{split}", unit="prompt")
    start = time.perf_counter()
    try:
        while len(pairs) < len(wanted):
            chunk = [prompt_ids(base, tokenizer, r, chat) for r in wanted[len(pairs):len(pairs) + batch]]
            out = leapdec.generate(model, chunk, method="ar", max_new_tokens=max_new_tokens, stop_tokens=stops)
            for p, toks, reason in zip(chunk, out.tokens, out.finish_reason):
                answer = list(toks) + ([stops[0]] if reason == "stop" and stops else [])
                pairs.append((p, answer))
            bar.update(len(chunk))
            if path is not None:
                _write_cache(path, pairs, {**meta, "generate_s": round(time.perf_counter() - start, 1)})
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    return pairs


# ----------------------------------------------------------------------------- sequence-level distillation

def request_prompt(signature: str, summary: str) -> str:
    """A short function request as a plain prompt, in the layout of ``corpus.EvalPrompt.prompt``:
    ``def signature:`` + the one-line docstring + the indentation of the first statement."""
    doc = summary[:1].upper() + summary[1:]
    return f'def {signature}:\n    """{doc}"""\n    '


def _code_blocks(text: str) -> list[tuple[str, bool]]:
    """The fenced code blocks of a markdown answer, each with whether its closing fence came."""
    blocks, rest = [], text
    while (start := rest.find("```")) >= 0:
        line_end = rest.find("\n", start)
        if line_end < 0:
            break
        body_start = line_end + 1
        end = rest.find("```", body_start)
        if end < 0:
            blocks.append((rest[body_start:], False))
            break
        blocks.append((rest[body_start:end], True))
        rest = rest[end + 3:]
    return blocks


def answer_body(answer: str, name: str, max_repeats: int = 3) -> str | None:
    """The body of the first ``def name(`` in a chat answer's code blocks (its statements after
    any docstring), laid out as ``corpus.EvalPrompt.reference`` after :func:`request_prompt`:
    4-space indentation, the first line's indentation left out (the prompt ends with it), a final
    newline. None when there is no such function, it was cut off (the answer stopped inside
    it), it does not parse, its body is only ``pass`` / ``...`` / a docstring, or one line repeats
    more than ``max_repeats`` times (a loop of a small model)."""
    for code, closed in _code_blocks(answer):
        lines = code.splitlines()
        for i, line in enumerate(lines):
            stripped = line.lstrip()
            if not (stripped.startswith(f"def {name}(") or stripped.startswith(f"async def {name}(")):
                continue
            indent = len(line) - len(stripped)
            end = i + 1                          # the function runs until a line at or left of the def
            while end < len(lines) and (not lines[end].strip()
                                        or len(lines[end]) - len(lines[end].lstrip()) > indent):
                end += 1
            if end == len(lines) and not closed:  # cut off mid-function by the answer's length
                return None
            source = textwrap.dedent("\n".join(lines[i:end])) + "\n"
            try:
                node = ast.parse(source).body[0]
            except (SyntaxError, ValueError, IndexError):
                return None
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]                  # the answer's own docstring: the prompt has one
            if not body or all(isinstance(b, ast.Pass) or (isinstance(b, ast.Expr) and isinstance(
                    b.value, ast.Constant) and b.value.value is Ellipsis) for b in body):
                return None
            src_lines = source.splitlines()
            text = textwrap.dedent("\n".join(src_lines[body[0].lineno - 1:node.end_lineno]))
            if any("\t" in ln[:len(ln) - len(ln.lstrip())] or (len(ln) - len(ln.lstrip())) % 4
                   for ln in text.splitlines() if ln.strip()):
                text = "\n".join(ast.unparse(b) for b in body)   # e.g. 2-space nesting: 4-space
            text = textwrap.indent(text, "    ").rstrip() + "\n"
            counts: dict[str, int] = {}
            for ln in text.splitlines():
                if ln.strip():
                    counts[ln] = counts.get(ln, 0) + 1
            if max(counts.values()) > max_repeats:
                return None
            try:
                ast.parse("def f():\n" + text)
            except (SyntaxError, ValueError):
                return None
            return text[4:]
        # no def of that name in this block: look at the next one
    return None


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def at_docstring_end(prompt: str, body: str) -> tuple[str, str]:
    """A ``(prompt, body)`` pair laid out as a user often types it: the prompt ends at the
    docstring's newline instead of in the body's indentation, and the body indents itself."""
    cut = prompt.rstrip(" ")
    return cut, prompt[len(cut):] + body


def function_bodies(base: str, n: int, split: str = "train", max_new_tokens: int = 128, seed: int = 0,
                    **answer_options) -> list[tuple[str, str]]:
    """Sequence-level distillation data for models with another tokenizer: ``(prompt, body)``
    texts, the prompt a short function request (:func:`request_prompt`: signature + one-line
    docstring) and the body the base's own answer to the same request (:func:`answers`, a chat
    model) cut to its function's statements (:func:`answer_body`). Answers without a clean body
    are dropped, so there are fewer than ``n`` pairs."""
    import leapdec

    pairs = answers(base, n, split, max_new_tokens, seed, **answer_options)
    tokenizer = answer_options.get("tokenizer") or leapdec.load_tokenizer(base)
    out = []
    for (signature, summary, _), (_, answer) in zip(requests(n, split, seed), pairs):
        body = answer_body(tokenizer.decode(answer, skip_special_tokens=True), signature.split("(", 1)[0])
        prompt = request_prompt(signature, summary)
        if body is not None and _parses(prompt + body):
            out.append((prompt, body))
    return out


# ----------------------------------------------------------------------------- the base

def load_base(base, device) -> tuple:
    """``(model, tokenizer, companion folder, weights SHA-256)`` of a frozen base: a zoo name or
    checkpoint folder, or a GGUF zoo model (its companions live in ``zoo.companion_home``)."""
    import leapdec
    from leapdec import zoo
    from leapdec.train import cards

    if isinstance(base, str) and base in zoo.GGUF_MODELS:
        model = leapdec.load_model(base, device=device, dtype=torch.float32)
        tok = leapdec.load_tokenizer(base)
        base_dir = zoo.companion_home(base)
        sha = checkpoint_hash(base)
    else:
        base_dir = zoo.resolve(base)
        model = leapdec.load_model(base_dir, device=device, dtype=torch.float32)
        tok = leapdec.load_tokenizer(base_dir)
        weights = base_dir / "model.safetensors"
        sha = cards.file_sha256(weights) if weights.is_file() else None
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if not model.config.causal:
        raise ValueError(f"base: {base_dir} is not a causal LM; these companions need an AR backbone")
    if tok.get_vocab_size() != model.config.vocab_size:
        raise ValueError(f"base: tokenizer vocabulary {tok.get_vocab_size()} != model's {model.config.vocab_size}")
    return model, tok, base_dir, sha



# ----------------------------------------------------------------------------- hidden states

HIDDEN_VERSION = 1


@torch.no_grad()
def hidden_states(base: str, pairs, model=None, batch: int = 8, cache: bool = True,
                  progress: bool = True) -> dict:
    """The frozen base's final-norm hidden states over every ``prompt + answer`` of ``pairs``
    (computed once, then cached beside the answers), for recipes that train on them:

    ``tokens [N]`` (the sequences concatenated), ``offsets [P + 1]`` (sequence i is
    ``offsets[i]:offsets[i + 1]``), ``prompt_lens [P]``, ``hidden [N, h]`` float16 and
    ``greedy [N]`` (the base's argmax token after each position)."""
    if not pairs:
        raise ValueError("pairs: empty")
    seqs = [list(p) + list(a) for p, a in pairs]
    key = hashlib.sha256(json.dumps([HIDDEN_VERSION, str(base), checkpoint_hash(base), seqs]).encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(base)).name)
    path = corpus.cache_dir() / "distill" / f"hidden-{safe}-{len(seqs)}-{key}.pt"
    if cache:
        try:
            found = torch.load(path, weights_only=True)
            if isinstance(found, dict) and found["hidden"].shape[0] == sum(map(len, seqs)):
                return found
        except Exception:  # missing or unreadable: recompute
            pass
    import leapdec

    if model is None:
        model = leapdec.load_model(base, dtype=torch.float32)
    lengths = [len(x) for x in seqs]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    hidden = torch.empty(offsets[-1], model.config.hidden_size, dtype=torch.float16)
    greedy = torch.empty(offsets[-1], dtype=torch.long)
    order = sorted(range(len(seqs)), key=lambda i: lengths[i])        # similar lengths per batch
    bar = tqdm(total=len(seqs), disable=not progress, desc=f"hidden states {safe}", unit="seq")
    for s in range(0, len(order), batch):
        rows = order[s:s + batch]
        width = max(lengths[i] for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :lengths[i]] = torch.tensor(seqs[i])                # right padding: causal, never seen
        h = model.hidden(ids.to(model.device))
        top = model.lm_head(h).argmax(-1).cpu()
        h = h.float().cpu()
        for r, i in enumerate(rows):
            hidden[offsets[i]:offsets[i + 1]] = h[r, :lengths[i]].to(torch.float16)
            greedy[offsets[i]:offsets[i + 1]] = top[r, :lengths[i]]
        bar.update(len(rows))
    bar.close()
    out = {"tokens": torch.tensor([t for x in seqs for t in x], dtype=torch.long),
           "offsets": torch.tensor(offsets, dtype=torch.long),
           "prompt_lens": torch.tensor([len(p) for p, _ in pairs], dtype=torch.long),
           "hidden": hidden, "greedy": greedy}
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(out, f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError:   # unwritable cache: work without it
            pass
    return out


# ----------------------------------------------------------------------------- draft vocabulary

def frequent_tokens(base: str, size: int, pairs, tokenizer=None, corpus_bytes: int = 2_000_000,
                    always=()) -> list[int]:
    """FR-Spec's frequency-ranked draft vocabulary: the ``size`` token ids most frequent in the
    answers of ``pairs`` (what a drafter drafts) plus ``corpus_bytes`` of the corpus train split
    encoded with the base's tokenizer, most frequent first (ties by id); ``always`` (e.g. the stop
    tokens) are included whatever their count."""
    import leapdec

    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    tokenizer = tokenizer if tokenizer is not None else leapdec.load_tokenizer(base)
    vocab = tokenizer.get_vocab_size()
    counts = torch.zeros(vocab, dtype=torch.long)
    for _, answer in pairs:
        counts += torch.bincount(torch.tensor(answer, dtype=torch.long), minlength=vocab)[:vocab]
    if corpus_bytes:
        texts = corpus.read_corpus("train", max_bytes=corpus_bytes)
        for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
            if enc.ids:
                counts += torch.bincount(torch.tensor(enc.ids, dtype=torch.long), minlength=vocab)[:vocab]
    forced = [int(t) for t in always if 0 <= int(t) < vocab]
    counts[forced] = counts.max() + 1
    order = sorted(range(vocab), key=lambda t: (-int(counts[t]), t))
    return order[:min(size, vocab)]


def coverage(vocab_ids, pairs) -> float:
    """Share of the answer tokens of ``pairs`` that lie in ``vocab_ids``."""
    keep = set(int(t) for t in vocab_ids)
    total = sum(len(a) for _, a in pairs)
    return sum(t in keep for _, a in pairs for t in a) / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    """``python -m leapdec.train.distill --base smollm2-135m-instruct --n 800``: fill the cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leapdec.train.distill", description=main.__doc__)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--split", default="train", choices=corpus.SPLITS)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pairs = answers(args.base, args.n, args.split, args.max_new_tokens, args.seed, args.batch,
                    threads=args.threads)
    tokens = sum(len(a) for _, a in pairs)
    print(f"{len(pairs)} pairs, {tokens} answer tokens, {time.perf_counter() - start:.0f} s -> "
          f"{cache_path(args.base, args.split, args.max_new_tokens, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
