"""Sampling and stop-token helpers shared by every method: greedy / temperature / top-k / top-p
sampling with an optional seeded generator, and the stop-token set of a model."""

from __future__ import annotations

import torch


def stop_token_set(model, stop_tokens) -> set[int]:
    """``stop_tokens`` as a set: None = the model's eos token(s); an int or an iterable of ints."""
    if stop_tokens is None:
        return set(model.config.stop_token_ids)
    if isinstance(stop_tokens, int):
        return {stop_tokens}
    try:
        out = {int(t) for t in stop_tokens}
    except (TypeError, ValueError):
        raise TypeError(f"stop_tokens must be None, an int or a list of ints, got {stop_tokens!r}") from None
    return out


# --------------------------------------------------------------------------- sampling

def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def make_generator(seed: int | None, device) -> torch.Generator | None:
    """A seeded generator on ``device`` (None when ``seed`` is None: the global RNG is used)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """float32 logits ``[N, V]`` divided by the temperature, with everything outside the top-k
    and outside the top-p nucleus set to -inf (at least the most likely token always stays)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row of ``logits [N, V]``: argmax when ``temperature == 0``, else a sample
    from the temperature / top-k / top-p warped distribution. Returns int64 ``[N]``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
