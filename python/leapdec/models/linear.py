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


def _few_rows_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (x.device.type == "cpu" and x.numel() <= FEW_ROWS * x.shape[-1] and x.shape[-1] > 0
            and x.dtype in (torch.float32, torch.bfloat16)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.compiler.is_compiling())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in x's dtype, whatever the weight's float dtype. ``packed``:
    the same weight packed by ``ops.pack_linear_weight``, which the few-row CPU path reads."""
    if _few_rows_cpu(x, weight, bias):
        b = None if bias is None else bias.detach()
        if packed is not None:
            return ops.linear(x, packed, b, out_features=weight.shape[0])
        return ops.linear(x, weight.detach(), b)
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is :func:`linear`. After
    :meth:`pack` the few-row CPU path reads a packed copy of the weight (until the weight changes)."""

    _packed: tuple[torch.Tensor, int, int] | None = None     # (packed, weight id, weight version)

    def pack(self) -> None:
        """Keep a packed copy of the weight for few-row CPU steps (``ops.pack_linear_weight``)."""
        w = self.weight
        self._packed = (ops.pack_linear_weight(w), id(w), w._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = None
        if self._packed is not None:
            p, wid, version = self._packed
            w = self.weight
            if wid == id(w) and version == w._version and p.device == w.device and p.dtype == w.dtype:
                packed = p
        return linear(x, self.weight, self.bias, packed)


def stream_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16, pack: bool = True) -> nn.Module:
    """Store ``model``'s linear weights (LM head included) in ``dtype`` while activations, norms,
    embeddings and the KV cache keep their dtype: half the bytes a decode step reads with 16-bit
    weights. A tied LM head gets its own copy (the embedding stays as it was). ``pack``: also keep
    each weight packed for the few-row CPU steps (sequential reads; the plain copy stays for
    prefill). In place; returns ``model``."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for name in ("weight", "bias"):
                p = getattr(module, name)
                if p is not None and p.dtype != dtype:
                    setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
            if pack and isinstance(module, Linear) and module.weight.device.type == "cpu":
                module.pack()
    return model
