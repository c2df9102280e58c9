"""Atomic file writes: a temporary file in the same folder, fsynced, then ``os.replace`` and an fsync of the
folder, so a file is always either its previous content or the complete new one, even when the process is
killed mid-write or the machine loses power right after."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder (fsynced), ``os.replace`` and an
    fsync of the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files ``write_atomic`` leaves in ``folder`` when its process is killed mid-write."""
    for stale in Path(folder).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically."""
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())
