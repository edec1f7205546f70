"""What every decoding method shares: the output type, prompt normalisation, sampling, stop
tokens, statistics and the method registry.

A method is a function ``fn(model, prompts, **options) -> GenerationOutput`` registered with
``@register_method("name")``. ``prompts`` is already normalised (a list of non-empty token
lists). Methods accept ``stream=callback``: after every model call they call
``callback(new_tokens)`` with, per row, the list of tokens committed by that call (empty for
rows with nothing new; stop tokens excluded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from leapdec.engine.sampling import (check_sampling, make_generator, sample_next,  # noqa: F401
                                     stop_token_set, warp_logits)
from leapdec.engine.spec import (available_methods, get_method, method_spec,  # noqa: F401
                                 register_method)


@dataclass
class GenerationOutput:
    """``tokens``: the new tokens of each row (prompt and stop token excluded).
    ``stats``: model_calls, tokens_per_call, new_tokens, wall_s, tokens_per_s, and per-method extras.
    ``finish_reason``: per row, ``"stop"`` (a stop token or stop string ended it) or ``"length"``
    (``max_new_tokens`` reached). ``text``: per row, the decoded new tokens (cut before a stop
    string) when a tokenizer is known (``tokenizer=`` or the model's checkpoint), else None."""

    tokens: list[list[int]]
    stats: dict = field(default_factory=dict)
    finish_reason: list[str] | None = None
    text: list[str] | None = None


# --------------------------------------------------------------------------- prompts

def normalize_prompts(input_ids, attention_mask=None, vocab_size: int | None = None) -> list[list[int]]:
    """Prompts as a list of token lists.

    ``input_ids``: a LongTensor ``[B, T]`` (or ``[T]``) with an optional ``attention_mask``
    (1 = token, 0 = padding; left or right padding), or a ragged list of token lists (a flat
    list of ints is one row). Every row must hold at least one token in ``[0, vocab_size)``.
    """
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype in (torch.bool,) or input_ids.is_floating_point() or input_ids.is_complex():
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            keep = attention_mask.bool().tolist()
            rows = [[t for t, k in zip(row, m) if k] for row, m in zip(rows, keep)]
    elif isinstance(input_ids, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask is only meaningful with a [B, T] tensor of input_ids; "
                             "give ragged prompts as a list of token lists without it")
        if all(isinstance(t, int) for t in input_ids) and input_ids:
            input_ids = [input_ids]
        rows = []
        for i, row in enumerate(input_ids):
            if isinstance(row, torch.Tensor):
                row = row.tolist()
            is_ids = isinstance(row, (list, tuple)) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in row)
            if not is_ids:
                raise TypeError(f"input_ids[{i}] must be a list of token ids (ints)")
            rows.append(list(row))
    else:
        raise TypeError(f"input_ids must be a LongTensor [B, T] or a list of token lists, "
                        f"got {type(input_ids).__name__}")
    if not rows:
        raise ValueError("input_ids holds no prompts")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} is empty: every row needs at least one token")
        if vocab_size is not None and (min(row) < 0 or max(row) >= vocab_size):
            bad = next(t for t in row if t < 0 or t >= vocab_size)
            raise ValueError(f"prompt {i} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return rows


# --------------------------------------------------------------------------- statistics

class Stats:
    """Counts of one generation. ``tokens_per_call`` is per sequence: tokens a row gains per
    model call it takes part in (stop tokens counted as produced), so plain AR scores 1.0."""

    def __init__(self):
        self.start = time.perf_counter()
        self.model_calls = 0
        self.row_calls = 0
        self.produced = 0

    def call(self, rows: int, produced: int) -> None:
        """One model call over ``rows`` sequences that produced ``produced`` tokens in total."""
        self.model_calls += 1
        self.row_calls += rows
        self.produced += produced

    def finish(self, tokens: list[list[int]], **extra) -> dict:
        wall = time.perf_counter() - self.start
        new = sum(len(t) for t in tokens)
        return {
            "model_calls": self.model_calls,
            "tokens_per_call": self.produced / self.row_calls if self.row_calls else 0.0,
            "new_tokens": new,
            "wall_s": wall,
            "tokens_per_s": new / wall if wall > 0 else 0.0,
            **extra,
        }
