"""Writing a benchmark script's section into BENCHMARKS.md, shared by every script under bench/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HEADER = "# Benchmarks\n\nEach script under bench/ writes its own section.\n\n"


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``path`` with ``section`` (which carries the
    markers), or append it; other sections stay. Written to a temp file, then renamed: never half-written."""
    old = path.read_text() if path.exists() else HEADER
    if start in old and end in old:
        before, rest = old.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        new = before + section + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
