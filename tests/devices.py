"""Device and dtype parametrization shared by the device-parametrized tests."""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]


def dtypes_for(device):
    """The float dtypes an op must support on this device (DESIGN.md)."""
    if device.type == "cuda":
        return [torch.float16, torch.bfloat16, torch.float32]
    return [torch.float32, torch.bfloat16]


TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}
