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
_LINEAR = torch.ops.leapdec.linear.default


_X_DTYPES = (torch.float32, torch.bfloat16)


def _few_rows_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``x @ weight^T`` goes to ``ops.linear``: CPU, few rows, no autograd, not compiling."""
    if not x.is_cpu or x.dtype not in _X_DTYPES:
        return False
    k = x.shape[-1]
    if k == 0 or x.numel() > FEW_ROWS * k:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    return not torch.compiler.is_compiling()


def _decode_step_cpu(x: torch.Tensor) -> bool:
    """The decode hot path of ``_few_rows_cpu`` without autograd: 2-D, contiguous, so the
    layers may call the op directly on a fresh output."""
    return x.dim() == 2 and x.shape[0] <= FEW_ROWS and x.is_cpu and not torch.is_grad_enabled() \
        and x.dtype in _X_DTYPES and x.is_contiguous() and not torch.compiler.is_compiling()


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


def weight_key(w: torch.Tensor) -> tuple:
    """What identifies a weight's current contents: the object, its storage (``.data`` swaps),
    in-place writes (version), dtype and device. A packed copy is valid while this is unchanged."""
    return (id(w), w.data_ptr(), w._version, w.dtype, w.device)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose forward is :func:`linear`. After
    :meth:`pack` the few-row CPU path reads a packed copy of the weight (until the weight changes)."""

    _packed: tuple[torch.Tensor, tuple] | None = None         # (packed, weight_key of the weight packed)

    def pack(self) -> None:
        """Keep a packed copy of the weight for few-row CPU steps (``ops.pack_linear_weight``)."""
        w = self.weight
        self._packed = (ops.pack_linear_weight(w), weight_key(w))

    def packed_weight(self) -> torch.Tensor | None:
        """The packed copy of the current weight, or None (never packed, or the weight changed)."""
        packed = self._packed
        return packed[0] if packed is not None and packed[1] == weight_key(self.weight) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, packed = self.weight, self.packed_weight()
        if _decode_step_cpu(x):                        # the op called directly: ~5 us of Python, not ~20
            out = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
            _LINEAR(out, x, w if packed is None else packed, self.bias)
            return out
        return linear(x, w, self.bias, packed)


class FusedLinears:
    """Linear layers that read the same input (q/k/v, gate/up) as one packed weight for few-row
    CPU steps: one ``ops.linear`` call instead of several. Used while every layer still holds
    the weight and bias it was fused from; otherwise :meth:`__call__` returns None (run them one
    by one)."""

    def __init__(self, layers: list[nn.Linear]):
        self.layers = layers
        weights = [layer.weight.detach() for layer in layers]
        self.sizes = [w.shape[0] for w in weights]
        self.out_features = sum(self.sizes)
        self.packed = ops.pack_linear_weight(torch.cat(weights))
        biases = [layer.bias for layer in layers]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach().to(weights[0].dtype) if b is not None else weights[0].new_zeros(n)
             for b, n in zip(biases, self.sizes)])
        self.key = self._key()

    def _key(self):
        return tuple(weight_key(p) for layer in self.layers for p in (layer.weight, layer.bias) if p is not None)

    def _fresh(self) -> bool:
        """Whether every layer still holds the weight and bias this copy was fused from."""
        key = self.key
        i = 0
        for layer in self.layers:
            for p in (layer.weight, layer.bias):
                if p is not None:
                    if weight_key(p) != key[i]:
                        return False
                    i += 1
        return True

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        y = self.matmul(x)
        return None if y is None else y.split(self.sizes, dim=-1)

    def matmul(self, x: torch.Tensor) -> torch.Tensor | None:
        """The layers' outputs side by side ``[..., sum(out_features)]``, or None when the fused
        copy does not apply (not a few-row CPU step, or a weight changed)."""
        if _decode_step_cpu(x):                        # the op called directly
            if not self._fresh():
                return None
            y = torch.empty((x.shape[0], self.out_features), dtype=x.dtype)
            _LINEAR(y, x, self.packed, self.bias)
        elif not _few_rows_cpu(x, self.packed, self.bias) or not self._fresh():
            return None
        else:
            y = ops.linear(x, self.packed, self.bias, out_features=self.out_features)
        return y


# Linear weights up to this many bytes also keep a packed copy on CPU by default (load_model and
# the companions' loader): the copy is cheap there, and larger models opt in with weight_dtype.
PACK_BY_DEFAULT_BYTES = 64 << 20


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s linear weights (what a decode step streams)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, nn.Linear))


def pack_linears(model: nn.Module) -> nn.Module:
    """Keep each CPU ``Linear``'s weight packed for the few-row steps (sequential reads; the plain
    copy stays for prefill and training) and fuse the layers that read the same input (q/k/v,
    gate/up) into one packed weight (``fuse_projections``). In place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, Linear) and module.weight.device.type == "cpu":
            module.pack()
    for module in model.modules():
        fuse = getattr(module, "fuse_projections", None)
        if fuse is not None and all(p.is_cpu for p in module.parameters()):
            fuse()
    return model


def pack_if_small(model) -> bool:
    """:func:`pack_linears` for a CPU module whose linear weights take at most
    ``PACK_BY_DEFAULT_BYTES``; whether it did."""
    if not isinstance(model, nn.Module):
        return False
    params = list(model.parameters())
    if not params or not all(p.is_cpu for p in params) or linear_weight_bytes(model) > PACK_BY_DEFAULT_BYTES:
        return False
    pack_linears(model)
    return True


def stream_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16, pack: bool = True) -> nn.Module:
    """Store ``model``'s linear weights (LM head included) in ``dtype`` while activations, norms,
    embeddings and the KV cache keep their dtype: half the bytes a decode step reads with 16-bit
    weights. A tied LM head gets its own copy (the embedding stays as it was). ``pack``: also
    :func:`pack_linears` (packed copies for the few-row CPU steps, q/k/v and gate/up fused). In
    place; returns ``model``."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for name in ("weight", "bias"):
                p = getattr(module, name)
                if p is not None and p.dtype != dtype:
                    setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
    return pack_linears(model) if pack else model
