"""The public entry points: load a model and its tokenizer by zoo name or checkpoint path, and
generate with any decoding method (re-exported by ``leapdec``)."""

from __future__ import annotations

from pathlib import Path

from leapdec import zoo
from leapdec.decoding import generate, methods, stream_generate
from leapdec.models import Transformer, load_checkpoint


def load_model(name_or_path, device="cpu", dtype=None) -> Transformer:
    """A ``Transformer`` from a zoo name (``"stdlib-ar"``) or a Hugging Face checkpoint directory.

    ``device``: where the weights go; ``dtype``: None keeps the checkpoint's dtype (float16
    becomes float32 on CPU), or torch.float32 / torch.bfloat16 / torch.float16 (or their names).
    """
    return load_checkpoint(zoo.resolve(name_or_path), device=device, dtype=dtype)


def load_tokenizer(name_or_path):
    """The ``tokenizers.Tokenizer`` saved as ``tokenizer.json`` beside a zoo model or checkpoint."""
    from tokenizers import Tokenizer

    path = Path(zoo.resolve(name_or_path)) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path.parent}")
    return Tokenizer.from_file(str(path))


__all__ = ["generate", "load_model", "load_tokenizer", "methods", "stream_generate"]
