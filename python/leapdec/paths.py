"""Output paths checked before a long run (training, demo, benchmarks), so that an unwritable
``--out`` or ``--png`` fails at once instead of after the work."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _probe(folder: Path, what: Path) -> None:
    """Create and remove a temporary file in ``folder`` (an existing folder): the one check that
    also holds for root and read-only file systems."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".leapdec-write-test-"):
            pass
    except OSError as e:
        raise OSError(f"cannot write to {what}: {e.strerror or e}") from None


def writable_dir(path, create: bool = True) -> Path:
    """Check that files can be written into folder ``path`` now. ``create``: make it (and its
    parents) if missing; else only check the nearest existing ancestor. Raises ``OSError``
    naming the folder."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OSError(f"cannot write to output folder {out}: it is a file")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot write to output folder {out}: {e.strerror or e}") from None
        _probe(out, out)
        return out
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OSError(f"cannot write to output folder {out}: {ancestor} is a file")
    _probe(ancestor, out)
    return out


def writable_file(path) -> Path:
    """Check that file ``path`` (written at the end of a run) can be written, creating its folder:
    raises ``OSError`` naming it otherwise. An existing file is left untouched."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise OSError(f"cannot write {file}: it is a folder")
    parent = file.parent if str(file.parent) else Path(".")
    try:
        writable_dir(parent)
    except OSError as e:
        raise OSError(f"cannot write {file}: {str(e).split(': ', 1)[-1]}") from None
    if file.exists() and not os.access(file, os.W_OK):
        raise OSError(f"cannot write {file}: permission denied")
    return file
