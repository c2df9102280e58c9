"""What every script under bench/ shares: writing its section into BENCHMARKS.md, the machine's description and
an onnxruntime session set up alike for every comparison."""

from __future__ import annotations

import os
import platform
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


def publish(section: str, path: Path | None, start: str, end: str) -> None:
    """Print a script's section, then write it into ``path`` between its markers (None: print only)."""
    print(section)
    if path is not None:
        write_section(path, section, start, end)
        print(f"wrote {path}")


def machine() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the logical CPU count."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} logical CPUs"


def ort_session(path: Path, threads: int):
    """An onnxruntime session of an exported model at ``threads`` intra-op threads, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # its workers spin during a run as usual, but stop when it ends: left spinning (the default), they hold the
    # second core for tens of ms after each call and every 2-thread competitor timed next shares its core
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
