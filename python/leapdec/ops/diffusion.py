"""Diffusion-LM decoding steps: ``unmask_and_filter`` (the commit rules of LLaDA, Fast-dLLM,
Learn2PD, ReDiff and WeDLM, fused with one pass over the logits) and ``topological_reorder``
(WeDLM's observed-first window order). The exact meaning of both: ``leapdec.reference``."""

from __future__ import annotations

from typing import NamedTuple

import torch

from leapdec.ops._lib import INT32_MAX, INT32_MIN, OPS, as_int32, should_check_cuda_values

POLICIES = ("topk", "threshold", "factor", "learned", "entropy")
DEFAULT_THRESHOLD = {"threshold": 0.9, "entropy": 0.4}  # Fast-dLLM tau, WeDLM entropy threshold
PARTIAL_WORDS = 8  # floats per (position, split) partial in the CUDA workspace

_sm_counts: dict = {}


class UnmaskResult(NamedTuple):
    committed: torch.Tensor   # [B] int32: positions the policy committed this call
    confidence: torch.Tensor  # [B, L] float32: p(predicted), -inf where not processed
    eot_pos: torch.Tensor     # [B] int32: End-of-Text position (later positions are padding), -1


class UnmaskStats(NamedTuple):
    committed: torch.Tensor
    confidence: torch.Tensor
    eot_pos: torch.Tensor
    predicted: torch.Tensor   # [B, L] int32: top-1 (or sampled) token, -1 where not processed
    entropy: torch.Tensor     # [B, L] float32: entropy in nats, +inf where not processed


def _num_splits(rows: int, vocab: int, device: torch.device) -> int:
    """Vocabulary splits per position so that the CUDA statistics kernel fills the GPU."""
    if device.type != "cuda" or rows == 0:
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = _sm_counts.get(index)
    if sms is None:
        sms = _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    target = 4 * sms
    if rows >= target:
        return 1
    return max(1, min(-(-target // rows), vocab // 2048, 64))


def _per_row(value, batch: int, device, name: str, dtype=torch.int32) -> torch.Tensor:
    """An int or a [B] tensor as a contiguous [B] tensor of ``dtype`` on ``device``."""
    if isinstance(value, int):
        if dtype == torch.int32 and not INT32_MIN <= value <= INT32_MAX:
            raise RuntimeError(f"{name} = {value} is outside the int32 range [{INT32_MIN}, {INT32_MAX}]")
        return torch.full((batch,), value, dtype=dtype, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or a [B] tensor, got {type(value).__name__}")
    if value.dim() == 0:
        value = value.reshape(1).expand(batch)
    if dtype == torch.int32:
        value = as_int32(value, name)
    elif value.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    return value.to(device=device, dtype=dtype).contiguous()


def filter_weights_of(filter_model) -> tuple:
    """``(w1 [H, F], b1 [H], w2 [F, H], b2 [F])`` of a Learn2PD filter given as those four
    tensors or as ``nn.Sequential(Linear(F, H), ReLU(), Linear(H, F))``."""
    if isinstance(filter_model, torch.nn.Sequential):
        linears = [m for m in filter_model if isinstance(m, torch.nn.Linear)]
        others = [m for m in filter_model if not isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
        if len(linears) != 2 or others or linears[0].bias is None or linears[1].bias is None:
            raise ValueError("a filter module must be Sequential(Linear(F, H), ReLU(), Linear(H, F)) with biases")
        return (linears[0].weight, linears[0].bias, linears[1].weight, linears[1].bias)
    weights = tuple(filter_model)
    if len(weights) != 4:
        raise ValueError(f"filter_weights must be (w1, b1, w2, b2), got {len(weights)} items")
    return weights


def _check_windows_on_host(block_start, block_end, seq_len, filter_in):
    starts, ends = block_start.cpu(), block_end.cpu()
    bad = (starts < 0) | (starts > ends) | (ends > seq_len)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise RuntimeError(f"block_start[{b}] = {int(starts[b])}, block_end[{b}] = {int(ends[b])}: the window "
                           f"must satisfy 0 <= start <= end <= L ({seq_len})")
    if filter_in is not None and bool(((ends - starts) > filter_in).any()):
        raise RuntimeError(f"a window is longer than the learned filter's input size F = {filter_in}")


def unmask_and_filter(logits, tokens, masked, policy: str = "topk", *, k=None, block_start=None,
                      block_end=None, threshold: float | None = None, factor: float = 1.0,
                      position_penalty: float = 0.02, filter_weights=None,
                      accept_threshold: float = 0.96, temperature: float = 0.0, seed=0,
                      eos_id: int = -1, pad_id: int | None = None, eotp: bool = False,
                      eot_threshold: float = 0.0, revise: bool = False, revise_topk: float = 1.0,
                      return_stats: bool = False):
    """One diffusion-LM decoding step: read ``logits [B, L, V]`` once, commit masked positions of
    each row's window ``[block_start, block_end)`` into ``tokens [B, L]`` (int64/int32) and clear
    them in ``masked [B, L]`` (bool), both in place.

    ``policy``: ``"topk"`` (commit ``k`` per row, LLaDA), ``"threshold"`` (confidence >=
    ``threshold``, default 0.9, Fast-dLLM), ``"factor"`` (Fast-dLLM's factor rule), ``"learned"``
    (Learn2PD: ``filter_weights`` accepted with sigmoid > ``accept_threshold``, union the ``k``
    quota), ``"entropy"`` (WeDLM: entropy + ``position_penalty`` * distance < ``threshold``,
    default 0.4). At least one masked window position commits while any remains. ``revise``
    (ReDiff) rewrites unmasked window positions with a more probable prediction; ``eotp``
    truncates the row after a predicted EOS (``eos_id``) with ``pad_id`` (default ``eos_id``).
    ``temperature > 0`` samples by Gumbel-max with counter-based noise from ``seed`` (an int:
    row b uses ``seed + b``; or a [B] int64 tensor for noise independent of the batch layout).
    Returns ``UnmaskResult(committed, confidence, eot_pos)`` (``UnmaskStats``, adding
    ``predicted`` and ``entropy``, with ``return_stats``). Exact rules: ``leapdec.reference``.

    Logits read by the op (the window, plus with ``eotp`` the masked positions after it) must
    be finite or -inf. On CPU a NaN / +inf / all -inf position is an error; on CUDA (no sync
    possible) such a position gets predicted -1, confidence NaN and is never committed.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a [B, L, V] tensor, got {getattr(logits, 'shape', type(logits))}")
    for name, t in (("tokens", tokens), ("masked", masked)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (updated in place), got {type(t).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64 or int32 (updated in place), got {tokens.dtype}")
    if masked.dtype != torch.bool:
        raise TypeError(f"masked must be a bool tensor (updated in place), got {masked.dtype}")
    B, L, V = logits.shape
    dev = logits.device
    logits = logits.contiguous()
    block_start = _per_row(0 if block_start is None else block_start, B, dev, "block_start")
    block_end = _per_row(L if block_end is None else block_end, B, dev, "block_end")
    if k is not None:
        k = _per_row(k, B, dev, "k")
    elif policy == "topk":
        raise ValueError("policy 'topk' needs k (tokens to commit per row: an int or a [B] tensor)")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD.get(policy, 0.0)
    seeds = None
    if temperature > 0:
        if isinstance(seed, int):
            seeds = seed + torch.arange(B, dtype=torch.int64, device=dev)
        else:
            seeds = _per_row(seed, B, dev, "seed", dtype=torch.int64)
    w1 = b1 = w2 = b2 = None
    if policy == "learned":
        if filter_weights is None:
            raise ValueError("policy 'learned' needs filter_weights: (w1, b1, w2, b2) or an nn.Sequential")
        w1, b1, w2, b2 = (torch.as_tensor(w).detach().to(device=dev, dtype=torch.float32).contiguous()
                          for w in filter_weights_of(filter_weights))
    if pad_id is None:
        pad_id = eos_id
    if should_check_cuda_values(block_start):
        _check_windows_on_host(block_start, block_end, L, w1.shape[1] if w1 is not None and w1.dim() == 2 else None)

    num_splits = _num_splits(B * L, V, dev)
    workspace = None
    if dev.type == "cuda":
        workspace = torch.empty(max(1, B * L * num_splits * PARTIAL_WORDS), dtype=torch.float32, device=dev)
    committed = torch.empty(B, dtype=torch.int32, device=dev)
    eot_pos = torch.empty(B, dtype=torch.int32, device=dev)
    confidence = torch.empty(B, L, dtype=torch.float32, device=dev)
    predicted = torch.empty(B, L, dtype=torch.int32, device=dev)
    entropy = torch.empty(B, L, dtype=torch.float32, device=dev)
    OPS.unmask_and_filter(logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy,
                          block_start, block_end, k, seeds, w1, b1, w2, b2, workspace, policy,
                          float(threshold), float(factor), float(position_penalty), float(temperature),
                          int(eos_id), int(pad_id), bool(eotp), float(eot_threshold), bool(revise),
                          float(revise_topk), float(accept_threshold), num_splits)
    if return_stats:
        return UnmaskStats(committed, confidence, eot_pos, predicted, entropy)
    return UnmaskResult(committed, confidence, eot_pos)


def topological_reorder(tokens, masked, positions=None):
    """WeDLM's window order: per row of ``tokens, masked [B, W]`` the observed tokens first and
    the masked after, each group in logical order (stable). ``positions [B, W]`` (default
    ``0..W-1``) travel with their tokens, so RoPE stays logical. Returns ``(tokens, positions,
    perm, inv_perm)``: ``perm[b][i]`` is the logical index at physical slot i (int32) and
    ``inv_perm`` its inverse."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a [B, W] tensor, got {getattr(tokens, 'shape', type(tokens))}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64 or int32, got {tokens.dtype}")
    if not isinstance(masked, torch.Tensor) or masked.dtype != torch.bool:
        raise TypeError(f"masked must be a bool tensor, got {getattr(masked, 'dtype', type(masked))}")
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    tokens, masked, positions = tokens.contiguous(), masked.contiguous(), positions.contiguous()
    tokens_out = torch.empty_like(tokens)
    positions_out = torch.empty_like(positions)
    perm = torch.empty(tokens.shape, dtype=torch.int32, device=tokens.device)
    inv_perm = torch.empty(tokens.shape, dtype=torch.int32, device=tokens.device)
    OPS.topological_reorder(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm)
    return tokens_out, positions_out, perm, inv_perm


@torch.library.register_fake("leapdec::unmask_and_filter")
def _unmask_and_filter_fake(logits, tokens, masked, committed, confidence, eot_pos, predicted, entropy,
                            block_start, block_end, k, seeds, filter_w1, filter_b1, filter_w2, filter_b2,
                            workspace, policy, threshold, factor, position_penalty, temperature, eos_id,
                            pad_id, eotp, eot_threshold, revise, revise_topk, accept_threshold, num_splits):
    return None


@torch.library.register_fake("leapdec::topological_reorder")
def _topological_reorder_fake(tokens, masked, positions, tokens_out, positions_out, perm, inv_perm):
    return None
