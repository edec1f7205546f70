"""Per-request state shared by every decoding method (nano-vllm's ``Sequence``).

A ``Row`` is one prompt's request: its new tokens, the room left under ``max_new_tokens``, its
stop tokens and stop strings, the tokens it gained in the current model call (the stream
delta), the tokens gained per call (the acceptance histogram of speculative methods) and why it
finished. ``Rows`` holds a batch of them with the call statistics, and turns them into the
``GenerationOutput`` every method returns.

One commit rule for all methods (``Row.commit``): tokens are taken in order until a stop token
(not kept, the row finishes with reason ``"stop"``), the end of a stop string (kept up to the
token that completes it; ``"stop"``) or ``max_new_tokens`` (``"length"``).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Sequence

import torch

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class Row:
    """One request. ``out``: new tokens so far; ``delta``: tokens gained by the current call."""

    __slots__ = ("index", "prompt", "out", "max_new_tokens", "stops", "stop_strings", "decode",
                 "finish_reason", "delta", "gained", "_text_tail")

    def __init__(self, index: int, prompt: list[int], max_new_tokens: int, stops: set[int],
                 stop_strings: Sequence[str] = (), decode: Callable[[list[int]], str] | None = None):
        self.index, self.prompt = index, prompt
        self.out: list[int] = []
        self.max_new_tokens = max_new_tokens
        self.stops, self.stop_strings, self.decode = stops, tuple(stop_strings), decode
        self.finish_reason: str | None = FINISH_LENGTH if max_new_tokens == 0 else None
        self.delta: list[int] = []
        self.gained: list[int] = []          # tokens gained per speculative step (incl. stops)
        self._text_tail = 0                  # output tokens already cleared of stop strings

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def room(self) -> int:
        """Tokens the row may still produce."""
        return self.max_new_tokens - len(self.out)

    @property
    def tokens(self) -> list[int]:
        """Prompt and output: the row's whole sequence."""
        return self.prompt + self.out

    def commit(self, tokens: Sequence[int]) -> int:
        """Take ``tokens`` (in order) under the row's stop rules; returns how many tokens the call
        produced for the statistics (kept tokens plus a stop token that ended the row)."""
        if self.done:
            return 0
        kept, produced = [], 0
        for t in tokens:
            if t in self.stops:
                produced += 1
                self.finish_reason = FINISH_STOP
                break
            kept.append(t)
            produced += 1
            if len(self.out) + len(kept) >= self.max_new_tokens:
                self.finish_reason = FINISH_LENGTH
                break
        if kept and self.stop_strings:
            cut = self._stop_string_end(kept)
            if cut is not None:
                produced -= len(kept) - cut
                kept = kept[:cut]
                self.finish_reason = FINISH_STOP
        self.out += kept
        self.delta += kept
        return produced

    def _stop_string_end(self, new: list[int]) -> int | None:
        """How many of ``new`` tokens to keep when one of them completes a stop string (None: none
        does). Only the tail of the output that may still hold a stop string is decoded."""
        if self.decode is None:
            raise ValueError("stop_strings need a tokenizer: pass tokenizer= (a tokenizers.Tokenizer) "
                             "or load the model from a checkpoint with a tokenizer.json")
        longest = max(len(s) for s in self.stop_strings)
        start = max(self._text_tail, len(self.out) - longest)   # a stop string spans <= longest tokens
        prev = self.out[start:]
        base = self.decode(prev)
        for j in range(len(new)):
            text = self.decode(prev + new[:j + 1])
            if any(s in text for s in self.stop_strings) and not any(s in base for s in self.stop_strings):
                return j + 1
        self._text_tail = max(0, len(self.out) + len(new) - longest)
        return None

    def text(self) -> str | None:
        """The decoded output, cut before the first stop string (None without a tokenizer)."""
        if self.decode is None:
            return None
        text = self.decode(self.out)
        for s in self.stop_strings:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
        return text


def _decoder(tokenizer) -> Callable[[list[int]], str] | None:
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "decode"):
        return lambda ids: tokenizer.decode(list(ids))
    raise TypeError(f"tokenizer must have a decode(ids) method, got {type(tokenizer).__name__}")


def model_tokenizer(model):
    """The tokenizer saved beside the model's checkpoint (None when there is none)."""
    cached = getattr(model, "_leapdec_tokenizer", False)
    if cached is not False:
        return cached
    tok = None
    base = getattr(model, "checkpoint_dir", None)
    if base is not None:
        try:
            from leapdec.api import load_tokenizer
            tok = load_tokenizer(base)
        except (FileNotFoundError, ValueError, OSError, ImportError):
            tok = None
    try:
        model._leapdec_tokenizer = tok
    except AttributeError:
        pass
    return tok


def check_stop_strings(stop_strings) -> tuple[str, ...]:
    if stop_strings is None:
        return ()
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    out = tuple(stop_strings)
    if not all(isinstance(s, str) and s for s in out):
        raise TypeError(f"stop_strings must be a string or a list of non-empty strings, got {stop_strings!r}")
    return out


class Rows:
    """A batch of ``Row``s plus the call statistics of one generation."""

    def __init__(self, prompts: list[list[int]], max_new_tokens: int, stops: set[int],
                 stop_strings=None, tokenizer=None, stream=None):
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        self.stop_strings = check_stop_strings(stop_strings)
        self.tokenizer = tokenizer
        decode = _decoder(tokenizer)
        if self.stop_strings and decode is None:
            raise ValueError("stop_strings need a tokenizer: pass tokenizer= (a tokenizers.Tokenizer) "
                             "or load the model from a checkpoint with a tokenizer.json")
        self.rows = [Row(i, list(p), max_new_tokens, stops, self.stop_strings, decode)
                     for i, p in enumerate(prompts)]
        self.stream = stream
        self.start = time.perf_counter()
        self.model_calls = 0
        self.row_calls = 0
        self.produced = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]

    @property
    def live(self) -> list[Row]:
        return [r for r in self.rows if not r.done]

    # ------------------------------------------------------------------ one model call
    def call(self, rows: int, produced: int) -> None:
        """Count one model call over ``rows`` sequences that produced ``produced`` tokens."""
        self.model_calls += 1
        self.row_calls += rows
        self.produced += produced

    def commit_call(self, rows: Sequence[Row], gained: Sequence[Sequence[int]], speculative=False) -> None:
        """Commit each row's gained tokens of one model call, count the call, stream the deltas."""
        produced = 0
        for row, g in zip(rows, gained):
            produced += row.commit(g)
            if speculative:
                row.gained.append(len(g))
        self.call(len(rows), produced)
        self.flush()

    def flush(self) -> None:
        """Hand the tokens gained since the last flush to the stream callback."""
        if self.stream is not None:
            self.stream([list(r.delta) for r in self.rows])
        for r in self.rows:
            r.delta.clear()

    # ------------------------------------------------------------------ output
    def acceptance_stats(self) -> dict:
        """Speculative methods: tokens gained per step per row, their mean and histogram."""
        accepted = [list(r.gained) for r in self.rows]
        flat = [a for row in accepted for a in row]
        hist = Counter(flat)
        return {
            "accepted_lengths": accepted,
            "mean_accepted_length": sum(flat) / len(flat) if flat else 0.0,
            "accept_length_histogram": {int(k): hist[k] for k in sorted(hist)},
            "tree_steps": len(flat),
        }

    def output(self, **extra):
        from leapdec.decoding.base import GenerationOutput

        tokens = [list(r.out) for r in self.rows]
        wall = time.perf_counter() - self.start
        new = sum(len(t) for t in tokens)
        stats = {
            "model_calls": self.model_calls,
            "tokens_per_call": self.produced / self.row_calls if self.row_calls else 0.0,
            "new_tokens": new,
            "wall_s": wall,
            "tokens_per_s": new / wall if wall > 0 else 0.0,
            **extra,
        }
        finish = [r.finish_reason or FINISH_LENGTH for r in self.rows]
        texts = None
        if self.tokenizer is not None:
            texts = [r.text() for r in self.rows]
        return GenerationOutput(tokens, stats, finish_reason=finish, text=texts)


def check_logits(logits: torch.Tensor, method: str, step: int) -> None:
    """One rule for every method: NaN logits are an error naming the method and the step."""
    if bool(torch.isnan(logits).any()):
        raise FloatingPointError(f"{method}: the model produced NaN logits at step {step} "
                                 f"(model call {step + 1}); check the weights and the dtype")
