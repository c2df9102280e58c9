"""Small forecast data and settings shared by the workflow tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# One torch thread, and the pure-PyTorch reference backend: these tests check the workflow, not the backends
# (whose kernels are built on first use and tested in tests/backends).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRUKIT_BACKEND": "reference"}
# A configuration small enough to train in about a second: 2 epochs, hidden 8, 2-day lookback of hourly data.
SMALL = {
    "epochs": 2,
    "hidden": 8,
    "batch": 64,
    "lookback": 48,
    "test_windows": 2,
    "val_windows": 2,
    "target": "load",
    "known": "temp",
    "plots": False,
}


def small_args(**changes: object) -> list[str]:
    """SMALL (updated with ``changes``) as key=value command-line arguments."""
    values = {**SMALL, **changes}
    return [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in values.items()]


def write_hourly_csv(path: Path, days: int = 30, future_hours: int = 0, seed: int = 0) -> Path:
    """An hourly CSV (time, load, temp, note): a daily cycle plus a temperature effect and noise; the last
    ``future_hours`` rows have an empty load (the future) and a filled temp."""
    rng = np.random.default_rng(seed)
    n = days * 24 + future_hours
    hours = np.arange(n)
    temp = 20 + 5 * np.sin(2 * np.pi * hours / 24 - 1) + rng.normal(0, 1, n)
    load = 10 + 3 * np.sin(2 * np.pi * hours / 24) + 0.2 * temp + rng.normal(0, 0.3, n)
    times = np.datetime64("2024-01-01T00:00") + hours.astype("timedelta64[h]")
    lines = ["time,load,temp,note"]
    for i in range(n):
        value = "" if i >= days * 24 else f"{load[i]:.4f}"
        lines.append(f"{str(times[i])[:16]},{value},{temp[i]:.3f},x")
    path.write_text("\n".join(lines) + "\n")
    return path


def grukit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m grukit ARGS`` in ``cwd`` with one torch thread."""
    return subprocess.run(
        [sys.executable, "-m", "grukit", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=120,
        check=False,
    )
