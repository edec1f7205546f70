"""leapdec: decode many tokens per model step.

Kernels (``leapdec.ops``, ``torch.ops.leapdec.*``), a paged KV cache (``leapdec.kv_cache``),
models (``leapdec.models``) and one module per decoding method (``leapdec.decoding``).
"""

import os

import torch  # noqa: F401  (loads libtorch before the extension)


def _public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the release, whose C++ ABI the extension is bound to."""
    return version.split("+")[0]


def _mismatch_message(compiled: str, running: str) -> str:
    return (f"leapdec was compiled against torch {compiled} but torch {running} is installed; the "
            f"compiled extension leapdec._C only works with the torch release it was built with. Install "
            f"it (pip install torch=={_public_version(compiled)}) or rebuild leapdec against this torch "
            f"(pip install --no-binary leapdec leapdec, or `pip install .` from a checkout). "
            f"LEAPDEC_SKIP_TORCH_CHECK=1 skips this check at your own risk.")


def _torch_pin_from_metadata():
    """The ``torch==X`` the installed leapdec distribution requires (None when not found)."""
    try:
        from importlib.metadata import PackageNotFoundError, requires
        reqs = requires("leapdec") or []
    except (ImportError, PackageNotFoundError):
        return None
    for req in reqs:
        name, sep, version = req.partition("==")
        if sep and name.strip() == "torch":
            return version.split(";")[0].strip()
    return None


def check_torch_version(compiled: str, running: str) -> None:
    """Raise ImportError when the running torch release differs from the one leapdec was compiled
    against (``LEAPDEC_SKIP_TORCH_CHECK=1`` turns the check off)."""
    if not compiled or os.environ.get("LEAPDEC_SKIP_TORCH_CHECK") == "1":
        return
    if _public_version(compiled) != _public_version(running):
        raise ImportError(_mismatch_message(compiled, running))


try:
    from leapdec import _C
except ImportError as e:   # typically undefined torch symbols: the extension was built for another torch
    _pin = _torch_pin_from_metadata()
    if _pin and _public_version(_pin) != _public_version(torch.__version__):
        raise ImportError(_mismatch_message(_pin, torch.__version__)) from e
    raise

check_torch_version(_C.build_info().get("torch_compiled", ""), torch.__version__)

from leapdec import ops  # noqa: E402
from leapdec import decoding, models, zoo  # noqa: E402
from leapdec.api import generate, load_model, load_tokenizer, methods, stream_generate  # noqa: E402

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """Version, CUDA on/off and CUDA archs of the compiled extension, the torch it was compiled
    against (``torch_compiled``, recorded by the C++ build) and the running torch (``torch``)."""
    info = dict(_C.build_info())
    info["torch"] = torch.__version__
    return info


def __getattr__(name):
    """``leapdec.images`` on first use (it needs scikit-learn only for its data and recipes)."""
    if name == "images":
        import importlib

        return importlib.import_module("leapdec.images")
    raise AttributeError(f"module 'leapdec' has no attribute {name!r}")


__all__ = ["build_info", "decoding", "generate", "load_model", "load_tokenizer", "methods", "models",
           "ops", "stream_generate", "zoo"]
