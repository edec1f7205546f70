import pytest
import torch

from devices import DEVICES, HAS_CUDA, TOLERANCES, dtypes_for  # noqa: F401  (re-exported)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device-parametrized test runs on CPU, and on CUDA where a GPU is present."""
    return torch.device(request.param)
