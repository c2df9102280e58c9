"""A small progress display on stderr: a live bar within an epoch (only on a terminal) and one line per epoch."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done, loss)`` redraws the bar at most 10 times a second; ``line(text)`` ends it with text."""

    def __init__(self, total: int, prefix: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.prefix, self.enabled = total, prefix, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.last_draw = 0.0
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.live or (now - self.last_draw < 0.1 and done < self.total):
            return
        self.last_draw = now
        filled = int(20 * done / max(self.total, 1))
        bar = "#" * filled + "." * (20 - filled)
        self.stream.write(f"\r{self.prefix} [{bar}] {done}/{self.total} loss {loss:.4f} {now - self.start:.0f}s")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
            self.stream.flush()
