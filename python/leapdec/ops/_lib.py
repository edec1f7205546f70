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


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _can_read_values(t: torch.Tensor) -> bool:
    """Whether the values of ``t`` may be read on the host now (not while tracing or capturing)."""
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda:
        return _check_values and not torch.cuda.is_current_stream_capturing()
    return t.device.type != "meta"


def check_int32_range(t: torch.Tensor, name: str) -> None:
    """Raise if an int64 index tensor holds a value that int32 cannot represent (a cast would wrap
    it: slot 2**32 + 5 would become slot 5)."""
    if t.numel() == 0 or not _can_read_values(t):
        return
    lo, hi = torch.aminmax(t)
    lo, hi = int(lo), int(hi)
    if lo < INT32_MIN or hi > INT32_MAX:
        bad = hi if hi > INT32_MAX else lo
        raise RuntimeError(f"{name} holds {bad}, outside the int32 range [{INT32_MIN}, {INT32_MAX}] of "
                         f"index tensors (it would wrap around if cast)")


def as_int32(t: torch.Tensor, name: str) -> torch.Tensor:
    """Index tensors are int32 and contiguous; int64 is converted after a range check (values
    outside int32 are an error, not wrapped), other dtypes are an error."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.int64:
        check_int32_range(t, name)
        t = t.to(torch.int32)
    elif t.dtype != torch.int32:
        raise TypeError(f"{name} must be an int32 (or int64) tensor, got {t.dtype}")
    return t.contiguous()
