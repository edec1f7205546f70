"""The embedded default checkpoints (the "zoo"): each is a subfolder of this package holding a
Hugging Face checkpoint directory (``config.json``, ``model.safetensors``, ``tokenizer.json``)
and its card. ``resolve`` turns a zoo name or a checkpoint path into a directory.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the zoo checkpoints shipped with this installation (subfolders with a config.json)."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if p.is_dir() and (p / "config.json").is_file())


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
