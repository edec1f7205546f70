"""Hugging Face checkpoint directories: ``config.json`` + ``model.safetensors`` (or shards listed
in ``model.safetensors.index.json``), read with ``safetensors`` and written in the same layout so
``transformers`` loads what leapdec saves. Nothing is downloaded.

Weight names: Hugging Face ``model.<name>`` is the Transformer's ``<name>`` and ``lm_head.weight``
is ``lm_head.weight`` (absent when the embeddings are tied).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from leapdec.models.config import ModelConfig
from leapdec.models.transformer import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# checkpoint entries that carry no weights of ours (older transformers saved the RoPE frequencies)
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint directory whose weights do not fit its config (names the tensor)."""


def _unreadable(file, e: Exception, error=None) -> Exception:
    error = error or CheckpointError
    return error(f"{file} is not a readable safetensors file (truncated, corrupt or not safetensors): {e}")


@contextlib.contextmanager
def open_safetensors(file, device: str = "cpu", error=None):
    """``safe_open(file)``; a truncated or garbage file raises ``error`` (default
    ``CheckpointError``) naming the file instead of a bare ``SafetensorError``."""
    try:
        handle = safe_open(str(file), framework="pt", device=str(device))
    except (SafetensorError, OSError) as e:
        raise _unreadable(file, e, error) from None
    with handle as f:
        try:
            yield f
        except SafetensorError as e:
            raise _unreadable(file, e, error) from None


def read_safetensors(file, device: str = "cpu", error=None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (``load_file``), with the file named on failure."""
    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as e:
        raise _unreadable(file, e, error) from None


def hf_name(name: str) -> str:
    """Transformer parameter name -> Hugging Face checkpoint name."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def our_name(name: str) -> str:
    """Hugging Face checkpoint name -> Transformer parameter name."""
    return name[len("model."):] if name.startswith("model.") else name


def _weight_files(path: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file holding it."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {e}") from None
        files = {}
        for name, fname in weight_map.items():
            file = path / fname
            if not file.is_file():
                raise FileNotFoundError(f"{index} lists shard {fname!r} (for {name!r}) but {file} does not exist")
            files[name] = file
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        with open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    hint = f" (found {', '.join(others)}; only safetensors checkpoints are supported)" if others else ""
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}{hint}")


def resolve_dtype(dtype, stored: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype weights stored as ``stored`` load as: ``dtype`` (a torch dtype or its name) or,
    for None, the stored one (float16 becomes float32 on a CPU)."""
    if dtype is None:
        # float16 has no CPU kernels; keep the stored dtype otherwise
        return torch.float32 if stored == torch.float16 and device.type == "cpu" else stored
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def load_checkpoint(path, device="cpu", dtype=None) -> Transformer:
    """Build a ``Transformer`` from a Hugging Face checkpoint directory.

    ``dtype`` (torch dtype or "float32"/"bfloat16"/"float16"): None keeps the stored dtype
    (float16 becomes float32 on CPU). Missing or extra tensors and shape mismatches raise
    ``CheckpointError`` naming the tensor; missing files raise ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config = ModelConfig.from_json(path / "config.json")
    files = _weight_files(path)
    device = torch.device(device)

    tied = config.tie_word_embeddings
    # transformers' rule: tie_word_embeddings with a stored lm_head.weight that differs from the
    # embeddings keeps the stored head (untied), with a warning; an equal copy stays tied.
    stored_head = None
    if tied and "lm_head.weight" in files and "model.embed_tokens.weight" in files:
        with open_safetensors(files["lm_head.weight"]) as f:
            head = f.get_tensor("lm_head.weight")
        with open_safetensors(files["model.embed_tokens.weight"]) as f:
            embed = f.get_tensor("model.embed_tokens.weight")
        if head.shape != embed.shape or not torch.equal(head, embed):
            warnings.warn(f"{path}: config.json sets tie_word_embeddings but the checkpoint stores an "
                          f"lm_head.weight different from the embeddings; keeping the stored head untied "
                          f"(as transformers does). Set tie_word_embeddings to false to silence this.",
                          stacklevel=2)
            stored_head = "lm_head.weight"
    model = Transformer(config, device="meta", init_std=None)
    if stored_head is not None:
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight, device="meta"))
    expected = {name: p for name, p in model.named_parameters()}   # tied lm_head appears once
    names = {}
    for ckpt_name in files:
        if ckpt_name.endswith(_IGNORED_SUFFIXES) or (tied and ckpt_name == "lm_head.weight" and stored_head is None):
            continue
        names[our_name(ckpt_name)] = ckpt_name
    missing = [hf_name(n) for n in expected if n not in names]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor(s) {', '.join(missing[:5])}{more} "
                              f"required by its config.json")
    unexpected = [names[n] for n in names if n not in expected]
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has tensor(s) {', '.join(unexpected[:5])} that its "
                              f"config.json does not describe (wrong num_hidden_layers or architecture?)")

    by_file: dict[Path, list[str]] = {}
    for name, ckpt_name in names.items():
        by_file.setdefault(files[ckpt_name], []).append(name)
    state, target = {}, None
    for file, group in by_file.items():
        with open_safetensors(file) as f:
            for name in group:
                ckpt_name = names[name]
                t = f.get_tensor(ckpt_name)
                want = tuple(expected[name].shape)
                if tuple(t.shape) != want:
                    raise CheckpointError(f"tensor {ckpt_name!r} in {file.name} has shape {tuple(t.shape)}, "
                                          f"config.json implies {want}")
                if not t.is_floating_point():
                    raise CheckpointError(f"tensor {ckpt_name!r} in {file.name} has dtype {t.dtype}, expected a float")
                if target is None:
                    target = resolve_dtype(dtype, t.dtype, device)
                state[name] = t.to(device=device, dtype=target)
    model.load_state_dict(state, strict=False, assign=True)
    if tied and stored_head is None:
        model.lm_head.weight = model.embed_tokens.weight
    model.checkpoint_dir = path.resolve()
    return model.eval()


def _tensor_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def save_checkpoint(model: Transformer, path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory (``config.json``,
    ``model.safetensors``; ``tokenizer.json`` when ``tokenizer`` is a ``tokenizers.Tokenizer``
    or the path of a tokenizer.json). Returns the directory."""
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a leapdec Transformer, got {type(model).__name__}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.named_parameters():       # a tied lm_head is listed once (embed_tokens)
        tensors[hf_name(name)] = p.detach().to("cpu").contiguous()
    save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})
    model.config.save_json(path / "config.json", dtype=_tensor_dtype_name(model.dtype))
    if tokenizer is not None:
        if hasattr(tokenizer, "save"):
            tokenizer.save(str(path / "tokenizer.json"))
        else:
            src = Path(tokenizer)
            if not src.is_file():
                raise FileNotFoundError(f"tokenizer file {src} does not exist")
            if src.resolve() != (path / "tokenizer.json").resolve():
                shutil.copyfile(src, path / "tokenizer.json")
    return path
