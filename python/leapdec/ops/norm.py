"""``rms_norm`` and ``fused_add_rms_norm``: a decoder layer's norms, and its residual add fused
into the next norm (vLLM's pair of ops); ``silu_and_mul``: its SwiGLU gate."""

from __future__ import annotations

import torch

from leapdec.ops._lib import OPS


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, in float32, returned in x's
    dtype (the normalised row is rounded to x's dtype before the weight, as Hugging Face's
    LlamaRMSNorm does). ``x [..., D]`` contiguous; ``weight [D]`` any float dtype; ``out`` may be x."""
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    OPS.rms_norm(out, x, weight, eps)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: ``residual += x`` (rounded to its dtype), then ``x = rms_norm(residual, weight)``.
    Returns ``(x, residual)``: the next sublayer's input and the new residual stream. One pass over
    the row instead of an add and a norm."""
    OPS.fused_add_rms_norm(x, residual, weight, eps)
    return x, residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :D]) * x[..., D:]`` for ``x [..., 2D]`` (gate then up, as a fused gate/up
    projection writes them), rounded like Hugging Face's ``act_fn(gate) * up``. One call instead
    of a split, a silu and a multiply."""
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension [..., 2D], got shape {tuple(x.shape)}")
    out = torch.empty(*x.shape[:-1], x.shape[-1] // 2, dtype=x.dtype, device=x.device)
    OPS.silu_and_mul(out, x)
    return out


@torch.library.register_fake("leapdec::silu_and_mul")
def _silu_and_mul_fake(out, input):
    return None


@torch.library.register_fake("leapdec::rms_norm")
def _rms_norm_fake(out, input, weight, eps):
    return None


@torch.library.register_fake("leapdec::fused_add_rms_norm")
def _fused_add_rms_norm_fake(input, residual, weight, eps):
    return None
