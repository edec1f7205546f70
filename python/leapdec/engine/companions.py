"""One cached loader for the weights a method needs beside its model: Medusa heads, a Falcon
drafter, a Learn2PD filter, ReDiff-refined weights.

A companion is found as ``given`` (an object already loaded, or a folder / file path) or as the
``<kind>/`` folder beside the model's checkpoint (``zoo.companion_dir``). Loaded companions are
kept per (file, modification time, device, dtype), at most ``MAX_CACHED`` of them, so repeated
``generate`` calls do not reload them. A small CPU companion is loaded packed
(``models.linear.pack_if_small``), as ``load_model`` loads a small model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from leapdec import zoo
from leapdec.models.linear import pack_if_small

MAX_CACHED = 16
_CACHE: dict = {}
_LOCK = threading.Lock()


def companion_path(model, kind: str, given=None, hint: str = "", filename: str | None = None) -> Path:
    """The companion's folder (or ``filename`` inside it) for ``model``; a clear error says where
    it looked and how to make one."""
    folder = zoo.companion_dir(model, kind, given, hint)
    if filename is None:
        return folder
    path = folder / filename if folder.is_dir() else folder
    if not path.is_file():
        raise FileNotFoundError(f"{kind}: no {filename} in {folder}{hint}")
    return path


def load_companion(model, kind: str, given, *, loaded_type: type, load: Callable[[Path], object],
                   filename: str, hint: str = "", check: Callable[[object], None] | None = None,
                   argument: str | None = None):
    """``given`` itself when it is a ``loaded_type``; else the companion at ``given`` / beside the
    model, loaded once with ``load(folder)`` on the model's device and dtype. ``check(obj)`` runs
    on every use (e.g. that heads fit the model's hidden size). ``argument``: the option's name
    in error messages (default ``kind``)."""
    if isinstance(given, loaded_type):
        if check is not None:
            check(given)
        return given
    if given is not None and not isinstance(given, (str, Path)):
        raise TypeError(f"{argument or kind} must be a {loaded_type.__name__}, a folder path or None, "
                        f"got {type(given).__name__}")
    weights = companion_path(model, kind, given, hint, filename)
    folder = weights.parent
    stamps = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.json")))
    key = (kind, str(weights.resolve()), weights.stat().st_mtime_ns, stamps, str(model.device), model.dtype)
    with _LOCK:
        obj = _CACHE.get(key)
        if obj is None:
            obj = load(folder)
            pack_if_small(obj)          # a small CPU companion's few-row steps read packed weights
            if len(_CACHE) >= MAX_CACHED:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = obj
    if check is not None:
        check(obj)
    return obj


def clear() -> None:
    """Forget every loaded companion."""
    with _LOCK:
        _CACHE.clear()
