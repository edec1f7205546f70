"""leapdec: decode many tokens per model step.

Kernels (``leapdec.ops``, ``torch.ops.leapdec.*``), a paged KV cache (``leapdec.kv_cache``),
models (``leapdec.models``) and one module per decoding method (``leapdec.decoding``).
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from leapdec import _C
from leapdec import ops
from leapdec import decoding, models, zoo
from leapdec.api import generate, load_model, load_tokenizer, methods, stream_generate

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """Version, CUDA on/off and CUDA archs of the compiled extension."""
    info = dict(_C.build_info())
    info["torch"] = torch.__version__
    return info


__all__ = ["build_info", "decoding", "generate", "load_model", "load_tokenizer", "methods", "models",
           "ops", "stream_generate", "zoo"]
