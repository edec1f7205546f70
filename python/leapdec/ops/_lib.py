"""Loads the compiled extension (which registers ``torch.ops.leapdec.*``) and shared helpers."""

from __future__ import annotations

import os

import torch

from leapdec import _C  # noqa: F401  (registers the op catalog with the dispatcher)

OPS = torch.ops.leapdec

_check_values = os.environ.get("LEAPDEC_CHECK_INDICES", "1") != "0"


def set_index_checks(enabled: bool) -> None:
    """Turn host-side range checks of CUDA index tensors on or off (they cost a sync).

    CPU index tensors are always checked inside the kernels; CUDA kernels skip out-of-range
    indices so memory is never corrupted, but only these checks turn them into an error.
    """
    global _check_values
    _check_values = bool(enabled)


def should_check_cuda_values(t: torch.Tensor) -> bool:
    """True when a CUDA index tensor should be range-checked on the host now."""
    if not (_check_values and t.is_cuda):
        return False
    if torch.compiler.is_compiling():
        return False
    return not torch.cuda.is_current_stream_capturing()


def as_int32(t: torch.Tensor, name: str) -> torch.Tensor:
    """Index tensors are int32 and contiguous; int64 is converted, other dtypes are an error."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.int64:
        t = t.to(torch.int32)
    elif t.dtype != torch.int32:
        raise TypeError(f"{name} must be an int32 (or int64) tensor, got {t.dtype}")
    return t.contiguous()
