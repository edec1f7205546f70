"""``linear``: the few-row matrix product of decode, verify and draft steps."""

from __future__ import annotations

import torch

from leapdec.ops._lib import OPS


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K] @ weight[N, K]^T (+ bias [N])`` in x's dtype, accumulated in float32.

    Made for few rows (a decode, verify or draft step): each weight is read once per tile of
    rows, and 16-bit weights (bfloat16, float16) are widened in registers, so a model may keep
    its weights in 16 bits while computing in float32. ``weight`` and ``x`` may differ in dtype.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension [..., K], got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(lead.numel(), x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], weight.shape[0], dtype=x.dtype, device=x.device)
    OPS.linear(out, x2, weight, bias)
    return out.view(*lead, weight.shape[0])


@torch.library.register_fake("leapdec::linear")
def _linear_fake(out, x, weight, bias):
    return None
