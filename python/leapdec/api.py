"""The public entry points: load a model and its tokenizer by zoo name or checkpoint path, and
generate with any decoding method (re-exported by ``leapdec``)."""

from __future__ import annotations

from pathlib import Path

from leapdec import zoo
from leapdec.decoding import generate, methods, stream_generate
from leapdec.models import Transformer, load_checkpoint
from leapdec.models.gguf import is_gguf_file


def _gguf_source(name_or_path):
    """``(gguf file, companion folder)`` when ``name_or_path`` is a GGUF zoo name or a GGUF file,
    else None."""
    if isinstance(name_or_path, str) and name_or_path in zoo.GGUF_MODELS:
        return zoo.gguf_file(name_or_path), zoo.companion_home(name_or_path)
    if isinstance(name_or_path, (str, Path)):
        path = Path(name_or_path).expanduser()
        if path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf_file(path)):
            return path, None
    return None


def load_model(name_or_path, device="cpu", dtype=None, weight_dtype=None) -> Transformer:
    """A ``Transformer`` from a zoo name (``"stdlib-ar"``, ``"smollm2-135m-instruct"``), a Hugging
    Face checkpoint directory or a GGUF file (Llama / Qwen2 / Qwen3; dequantized).

    ``device``: where the weights go; ``dtype``: None keeps the checkpoint's dtype (float16
    becomes float32 on CPU; a GGUF file loads as float32), or torch.float32 / torch.bfloat16 /
    torch.float16 (or their names). ``weight_dtype`` (e.g. ``"bfloat16"``): store the linear
    layers' weights (LM head included) in that dtype while activations, embeddings and the KV
    cache keep ``dtype``; a CPU decode step then reads half the bytes
    (``leapdec.models.linear.stream_weights``), from a packed copy (the weights in the order the
    few-row kernel reads them; ``weight_dtype`` equal to ``dtype`` packs without converting). A
    CPU model whose linear weights take at most ``models.linear.PACK_BY_DEFAULT_BYTES`` (64 MiB:
    the zoo's small models) gets the packed copy by default (``models.linear.pack_if_small``).
    Load companions after this.
    """
    source = _gguf_source(name_or_path)
    if source is not None:
        from leapdec.models.gguf import load_gguf

        model = load_gguf(source[0], device=device, dtype=dtype, checkpoint_dir=source[1])
    else:
        path = zoo.resolve(name_or_path)
        _refuse_image_models(path)
        model = load_checkpoint(path, device=device, dtype=dtype)
    from leapdec.models.linear import pack_if_small, stream_weights

    if weight_dtype is not None:
        from leapdec.models.loading import resolve_dtype

        stream_weights(model, resolve_dtype(weight_dtype, model.dtype, model.device))
    else:        # stdlib-ar (10 MB): AR 0.81-0.87 -> 0.65-0.68 ms per step on one thread
        pack_if_small(model)
    return model


def _refuse_image_models(path: Path) -> None:
    """An image generator's checkpoint (``leapdec.images``) is not a language model."""
    import json

    try:
        extra = json.loads((Path(path) / "config.json").read_text()).get("leapdec") or {}
    except (OSError, ValueError):
        return
    if isinstance(extra, dict) and extra.get("image"):
        raise ValueError(f"{Path(path).name} is a masked image generator, not a language model: load it "
                         f"with leapdec.images.load({Path(path).name!r}) and sample with leapdec.images.sample")


def load_tokenizer(name_or_path):
    """The ``tokenizers.Tokenizer`` saved as ``tokenizer.json`` beside a zoo model or checkpoint,
    or the one a GGUF file (or GGUF zoo name) describes."""
    from tokenizers import Tokenizer

    source = _gguf_source(name_or_path)
    if source is not None:
        from leapdec.models.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(source[0])

    return Tokenizer.from_file(str(zoo.tokenizer_file(name_or_path)))


__all__ = ["generate", "load_model", "load_tokenizer", "methods", "stream_generate"]
