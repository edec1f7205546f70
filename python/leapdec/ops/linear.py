"""``linear``: the few-row matrix product of decode, verify and draft steps."""

from __future__ import annotations

import torch

from leapdec.ops._lib import OPS


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [N, K]`` in :func:`linear`'s packed layout ``[ceil(N/8), ceil(K/8), 8, 8]``: row
    ``8t + r``, column ``8b + j`` at ``[t, b, r, j]``, zero padded, so the 8 rows a CPU tile reads
    are one sequential run of memory (~1.5x the DRAM read rate of 8 rows side by side here)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    np_, kp = -(-n // 8) * 8, -(-k // 8) * 8
    padded = torch.nn.functional.pad(weight.detach(), (0, kp - k, 0, np_ - n))
    return padded.view(np_ // 8, 8, kp // 8, 8).permute(0, 2, 1, 3).contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out_features: int | None = None) -> torch.Tensor:
    """``x [..., K] @ weight[N, K]^T (+ bias [N])`` in x's dtype, accumulated in float32.

    Made for few rows (a decode, verify or draft step): each weight is read once per tile of
    rows, and 16-bit weights (bfloat16, float16) are widened in registers, so a model may keep
    its weights in 16 bits while computing in float32. ``weight`` and ``x`` may differ in dtype.
    ``weight`` may also be packed by :func:`pack_linear_weight`; then ``out_features`` is N.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension [..., K], got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    n = weight.shape[0]
    if weight.dim() == 4:
        if out_features is None:
            raise ValueError("out_features (N) is needed with a packed weight")
        n = out_features
    out = torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)
    OPS.linear(out, x2, weight, bias)
    return out.view(*lead, n)


@torch.library.register_fake("leapdec::linear")
def _linear_fake(out, x, weight, bias):
    return None
