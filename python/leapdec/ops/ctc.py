"""``ctc_prefix_score``: one step of CTC prefix scoring (ESPnet CTCPrefixScoreTH semantics) for a
batch of hypotheses x candidate tokens, and the helpers a beam search needs around it."""

from __future__ import annotations

from typing import NamedTuple

import torch

from leapdec.ops._lib import OPS, as_int32, should_check_cuda_values

LOG_ZERO = -1e10
"""ESPnet's finite log-zero: impossible prefixes score about this (no -inf arithmetic)."""


class CTCPrefixScores(NamedTuple):
    r: torch.Tensor    # [T, 2, N, C] float32: forward variables of every extended prefix
    psi: torch.Tensor  # [N, C] float32: log prefix probability of each extended prefix


def ctc_initial_state(log_probs: torch.Tensor, frame_lens: torch.Tensor, hyp_utt: torch.Tensor,
                      blank: int = 0) -> torch.Tensor:
    """Forward variables ``[T, 2, N]`` of the empty prefix for hypotheses of utterances
    ``hyp_utt [N]``: non-blank log-zero, blank the cumulative blank log-probability (constant past
    the utterance's ``frame_lens``, as ESPnet pads it)."""
    T = log_probs.shape[1]
    utt = hyp_utt.to(log_probs.device, torch.long)
    lens = frame_lens.to(log_probs.device, torch.long)[utt]                        # [N]
    blank_lp = log_probs[utt, :, blank].float()                                    # [N, T]
    blank_lp = blank_lp.masked_fill(torch.arange(T, device=log_probs.device) >= lens[:, None], 0.0)
    r = torch.full((T, 2, utt.numel()), LOG_ZERO, dtype=torch.float32, device=log_probs.device)
    r[:, 1] = blank_lp.cumsum(1).t()
    return r


def ctc_prefix_score(log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt, cand,
                     blank: int = 0, eos: int = -1, out=None) -> CTCPrefixScores:
    """Extend hypotheses by candidate tokens and score the new prefixes.

    ``log_probs [B, T, V]``: CTC log-softmax per utterance (float32 / bfloat16 / float16), valid
    for frames ``t < frame_lens[b]``. Hypothesis n belongs to utterance ``hyp_utt[n]``, has
    ``prefix_len[n]`` tokens ending in ``last_token[n]`` and forward variables ``r_prev [T, 2, N]``
    (float32; ``[:, 0]`` non-blank, ``[:, 1]`` blank; :func:`ctc_initial_state` for the empty
    prefix, then ``r`` of a previous step selected per survivor). ``cand [N, C]`` are the tokens
    to try (-1 pads a ragged row). Returns ``r [T, 2, N, C]`` and ``psi [N, C]``: the log prefix
    probability; a candidate equal to ``eos`` gets the probability that the utterance ends with
    the prefix itself, ``blank`` and padding get :data:`LOG_ZERO`. A search's CTC score of a
    candidate is ``psi - psi_prev`` (the previous step's psi of the hypothesis). ``out=(r, psi)``:
    preallocated float32 outputs of those shapes (a search reuses them: fresh pages for a large
    ``r`` every step cost as much as the scoring)."""
    if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 3:
        raise ValueError(f"log_probs must be a [B, T, V] tensor, got {getattr(log_probs, 'shape', type(log_probs))}")
    if not isinstance(cand, torch.Tensor) or cand.dim() != 2:
        raise ValueError(f"cand must be an [N, C] tensor, got {getattr(cand, 'shape', type(cand))}")
    log_probs = log_probs.contiguous()
    frame_lens = as_int32(frame_lens, "frame_lens")
    prefix_len = as_int32(prefix_len, "prefix_len")
    last_token = as_int32(last_token, "last_token")
    hyp_utt = as_int32(hyp_utt, "hyp_utt")
    cand = as_int32(cand, "cand")
    if not isinstance(r_prev, torch.Tensor) or r_prev.dtype != torch.float32:
        raise TypeError(f"r_prev must be a float32 tensor, got {getattr(r_prev, 'dtype', type(r_prev))}")
    r_prev = r_prev.contiguous()
    B, T, V = log_probs.shape
    N, C = cand.shape
    if should_check_cuda_values(cand):
        _check_values_on_host(frame_lens, hyp_utt, prefix_len, cand, B, T, V)
    if out is None:
        r = torch.empty(T, 2, N, C, dtype=torch.float32, device=log_probs.device)
        psi = torch.empty(N, C, dtype=torch.float32, device=log_probs.device)
    else:
        r, psi = out
    OPS.ctc_prefix_score(r, psi, log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt, cand,
                         int(blank), int(eos))
    return CTCPrefixScores(r, psi)


def _check_values_on_host(frame_lens, hyp_utt, prefix_len, cand, B, T, V):
    """Range checks of CUDA index tensors (the kernel clamps instead of failing)."""
    if frame_lens.numel() and (int(frame_lens.min()) < 1 or int(frame_lens.max()) > T):
        raise RuntimeError(f"frame_lens must be in [1, T={T}]")
    if hyp_utt.numel() and (int(hyp_utt.min()) < 0 or int(hyp_utt.max()) >= B):
        raise RuntimeError(f"hyp_utt must be in [0, B={B})")
    if prefix_len.numel() and int(prefix_len.min()) < 0:
        raise RuntimeError("prefix_len must be >= 0")
    if cand.numel() and (int(cand.min()) < -1 or int(cand.max()) >= V):
        raise RuntimeError(f"cand must be in [-1, V={V}) (-1 pads a candidate row)")


@torch.library.register_fake("leapdec::ctc_prefix_score")
def _ctc_prefix_score_fake(r_out, psi, log_probs, frame_lens, r_prev, prefix_len, last_token, hyp_utt,
                           cand, blank, eos):
    return None
