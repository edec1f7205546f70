"""Linear layers that decode fast on CPU and may keep 16-bit weights under float32 activations.

A decode, verify or draft step multiplies a few rows by every weight of the model once, so on a
CPU it is bound by reading the weights. torch's GEMM costs 1.8x its one-row time for two rows
and its one-row GEMV uses one thread; ``leapdec.ops.linear`` streams each weight once for up to
``FEW_ROWS`` rows on all threads and widens bfloat16/float16 weights in registers. Everything
else (prefill, training, CUDA) goes to ``F.linear`` (casting a 16-bit weight to the activations'
dtype first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leapdec import ops

FEW_ROWS = 16  # rows (tokens) up to which CPU calls use leapdec.ops.linear


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in x's dtype, whatever the weight's float dtype."""
    if (x.device.type == "cpu" and x.numel() <= FEW_ROWS * x.shape[-1] and x.shape[-1] > 0
            and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.compiler.is_compiling()):
        return ops.linear(x, weight.detach(), None if bias is None else bias.detach())
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def stream_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store ``model``'s linear weights (LM head included) in ``dtype`` while activations, norms,
    embeddings and the KV cache keep their dtype: half the bytes a decode step reads. A tied LM
    head gets its own copy (the embedding stays as it was). In place; returns ``model``."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for name in ("weight", "bias"):
                p = getattr(module, name)
                if p is not None and p.dtype != dtype:
                    setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
    return model
