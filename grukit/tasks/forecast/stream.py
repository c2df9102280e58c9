"""Forecast data bigger than memory (``stream=true``): a CSV or Parquet file read in chunks, never whole.

Each pass over the file holds one chunk of ``CHUNK_ROWS`` rows at a time, plus the rows it shares with the
chunk before (so that checks and windows cross chunk boundaries):

- ``scan``: every check of a whole-file load (columns, numbers, NaNs, order and gaps), the row counts and
  the file's last rows, kept as an ordinary in-memory frame (the tail). The validation, test and backtest
  windows, the calibration, the baselines and ``predict`` use the tail exactly as they use a loaded file
  (the baselines' interval widths come from the errors in the tail's in-sample part);
- ``statistics``: the covariate means and standard deviations and the MASE scales over the in-sample rows,
  accumulated chunk by chunk (the same numbers as a whole-file load);
- ``batches`` (each epoch): each chunk's training windows in a random order drawn from the epoch's seeded
  generator (a share ``sample`` of them), batches filled across chunk boundaries.

Peak memory follows CHUNK_ROWS and the window sizes, not the file size (``bench/memory.py`` measures it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grukit.errors import ConfigError
from grukit.tasks.forecast.data import ForecastFrame, Table, auto_season, table_frames
from grukit.tasks.forecast.windows import DEFAULT_HELD_OUT, Layout, Scaling, Windows, resolve_layout
from grukit.tasks.tables import Moments, file_tables, stream_path

CHUNK_ROWS = 50_000  # rows read at a time (at least twice the rows one window spans)


def _rows(table: Table) -> int:
    return len(next(iter(table.columns.values())))


def overlapping(tables: Iterator[Table], overlap: int) -> Iterator[tuple[Table, int, int]]:
    """(table, start, shared): each table preceded by the last ``overlap`` rows read before it (``shared`` of
    them); table row i is the file's data row start + i, and messages keep naming the file's rows."""
    previous: Table | None = None
    own_start = 0
    for table in tables:
        own = _rows(table)
        shared = min(overlap, own_start)
        if shared:
            columns = {n: np.concatenate([previous.columns[n][-shared:], v]) for n, v in table.columns.items()}
            table = replace(table, columns=columns, first_line=table.first_line - shared)
        yield table, own_start - shared, shared
        own_start += own
        previous = table


@dataclass
class Stream:
    """The streamed file and what ``prepare_stream`` found: ``columns`` (time, target, known, past: resolved
    names), its observed rows, ``train`` (the first and last training origin, file rows), ``chunks`` ((first
    file row, rows) of each chunk of ``chunk_rows`` rows), the tail's layout, and after ``statistics`` the
    covariate scaling and each target's MASE scale."""

    path: Path
    columns: tuple[str, list[str], list[str], list[str]]
    n_observed: int
    train: tuple[int, int]
    chunks: list[tuple[int, int]]
    layout: Layout
    calendar: bool
    sample: float
    chunk_rows: int
    scaling: Scaling | None = None
    scales: list[float] = field(default_factory=list)

    def _frames(self, overlap: int) -> Iterator[tuple[ForecastFrame, int, int]]:
        """(frame, start, shared) of each chunk, checked, as ``overlapping`` gives its table."""
        for table, start, shared in overlapping(file_tables(self.path, self.chunk_rows), overlap):
            yield table_frames(table, *self.columns)[0], start, shared

    def _origins(self, start: int, shared: int, rows: int) -> np.ndarray:
        """The training origins (file rows) of a chunk of ``rows`` rows from file row ``start`` whose first
        ``shared`` rows belong to the chunk before: windows inside the chunk that end in its own rows."""
        lay, (first, last) = self.layout, self.train
        low = max(first, start + shared - lay.horizon + 1, start + lay.lookback)
        return np.arange(low, min(last, start + rows - lay.horizon) + 1)

    @property
    def overlap(self) -> int:
        """Rows a chunk shares with the one before in the training pass: one window's span less one."""
        return self.layout.lookback + self.layout.horizon - 1

    def _drawn(self, pairs: int) -> int:
        return math.ceil(pairs * self.sample)

    @property
    def windows(self) -> int:
        """Training windows per epoch: a share ``sample`` of each chunk's (target column, origin) pairs."""
        n_targets = len(self.columns[1])
        return sum(
            self._drawn(n_targets * len(self._origins(first - shared, shared, rows + shared)))
            for first, rows in self.chunks
            for shared in [min(self.overlap, first)]
        )

    def batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        """One epoch of shuffled training batches (``Windows.batch`` contents), read chunk by chunk."""
        pending: list[dict[str, Tensor]] = []
        size = 0
        for frame, start, shared in self._frames(self.overlap):
            origins = self._origins(start, shared, len(frame.times))
            windows = Windows([frame], self.layout, self.scaling, self.calendar)
            pairs = len(self.columns[1]) * len(origins)
            order = rng.permutation(pairs)[: self._drawn(pairs)]
            while len(order):
                take, order = order[: batch - size], order[batch - size :]
                pending.append(windows.batch(take // len(origins), origins[take % len(origins)] - start))
                size += len(take)
                if size == batch:
                    yield _concat(pending)
                    pending, size = [], 0
        if pending:
            yield _concat(pending)

    def statistics(self, in_sample_end: int) -> None:
        """Set ``scaling`` and ``scales``: the covariate Scaling and each target's MASE scale over the file rows
        [0, in_sample_end), the numbers ``Scaling.fit`` and ``seasonal_scale`` give on a whole-file load."""
        season = self.layout.season
        known, past = Moments(len(self.columns[2])), Moments(len(self.columns[3]))
        diffs = Moments(len(self.columns[1]))
        for frame, start, shared in self._frames(season):
            end = min(len(frame.times), in_sample_end - start)
            if end <= shared:
                break
            known.add(frame.known[shared:end])
            past.add(frame.past[shared:end])
            t = np.arange(max(shared, season), end)
            diffs.add(np.abs(frame.targets[:, t] - frame.targets[:, t - season]).T)
        self.scaling = Scaling(*known.mean_std(), *past.mean_std())
        self.scales = [float(v) for v in diffs.mean_std()[0]]


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batches from ``Windows.batch`` joined along the batch dimension (dim 1 of past, 0 of the others)."""
    return {key: torch.cat([p[key] for p in parts], dim=1 if key == "past" else 0) for key in parts[0]}


def _tail_rows(frame: ForecastFrame, cfg: dict[str, Any]) -> int:
    """Observed rows the tail keeps: the most the held-out windows can need (with the automatic settings'
    largest values), plus eight lookbacks for the baselines' in-sample error fit."""
    season = cfg["season"] or auto_season(frame)
    horizon = cfg["horizon"] or season
    stride = cfg["stride"] or horizon
    n_test = cfg["test_windows"] or DEFAULT_HELD_OUT
    held = (n_test - 1 + (cfg["val_windows"] or n_test) - 1) * stride + 2 * horizon
    return held + 8 * (cfg["lookback"] or 7 * season) + horizon


def prepare_stream(cfg: dict[str, Any], columns: dict[str, Any]) -> tuple[ForecastFrame, Layout, Stream]:
    """Scan the file cfg["data"] (see the module docstring): the tail frame, the layout of its held-out
    windows (settings resolved and checked on the whole file) and the Stream that reads the training
    windows, with its statistics. ``columns``: time, target, known, past and series, from the config or a
    checkpoint's meta. ConfigError for a bundled dataset or a series column."""
    path = stream_path(cfg["data"])
    if columns["series"]:
        raise ConfigError("stream=true reads one series; drop series= or stream=true")
    names = (columns["time"], columns["target"], columns["known"], columns["past"])
    kept: deque[tuple[Table, int, int]] = deque()  # the last chunks: (table, start, shared)
    chunks: list[tuple[int, int]] = []
    n_observed = keep = 0
    for table, start, shared in overlapping(file_tables(path, CHUNK_ROWS), 2):
        frame = table_frames(table, *names)[0]  # every check, across chunk boundaries too: the step the two
        # shared rows set is the one checked, so a gap right at the boundary is named as such
        if not chunks:
            names = (frame.time_name, frame.target_names, frame.known_names, frame.past_names)
            keep = _tail_rows(frame, cfg)
        if frame.n_observed > shared:
            n_observed = start + frame.n_observed
        chunks.append((start + shared, len(frame.times) - shared))
        kept.append((table, start, shared))
        future = start + len(frame.times) - n_observed
        own = [_rows(t) - s for t, _, s in kept]
        while sum(own) - own[0] >= keep + future:
            kept.popleft()
            own.pop(0)
    first_table, first_start, first_shared = kept[0]
    tail_table = replace(
        first_table,
        columns={n: np.concatenate([t.columns[n][s:] for t, _, s in kept]) for n in first_table.columns},
        first_line=first_table.first_line + first_shared,
    )
    tail = table_frames(tail_table, *names)[0]
    layout = resolve_layout([tail], cfg, observed=[n_observed])
    tail_start = first_start + first_shared
    train = (layout.lookback, tail_start + int(layout.val_origins[0]) - layout.horizon)
    stream = Stream(path, names, n_observed, train, chunks, layout, cfg["calendar"], cfg["sample"], CHUNK_ROWS)
    stream.statistics(tail_start + layout.in_sample_end(0))
    return tail, layout, stream
