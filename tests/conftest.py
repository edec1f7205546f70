import pytest
import torch

from devices import DEVICES, HAS_CUDA, TOLERANCES, dtypes_for  # noqa: F401  (re-exported)


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device-parametrized test runs on CPU, and on CUDA where a GPU is present."""
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one torch thread is as fast alone and far faster on a shared, busy CPU.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
