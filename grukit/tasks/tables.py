"""Reading a CSV or Parquet file in chunks, for tasks that stream data bigger than memory (``stream=true``):
the file as Tables of a fixed number of rows, and column moments accumulated chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from grukit.data.bundled import names as bundled_names
from grukit.errors import ConfigError, DataError
from grukit.tasks.forecast.data import PARQUET_SUFFIXES, Table, csv_tables
from grukit.tasks.forecast.parquet import iter_parquet


def stream_path(data: str) -> Path:
    """The file ``data`` (a config's data value) that ``stream=true`` reads chunk by chunk; ConfigError for a
    bundled dataset (they load whole), DataError when it is not a file."""
    if data == "auto" or data in bundled_names():
        raise ConfigError("stream=true reads a CSV or Parquet file chunk by chunk; bundled datasets load whole")
    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(f"data {data!r} is not a file; stream=true needs a CSV or Parquet file")
    return path


def file_tables(path: Path, chunk_rows: int) -> Iterator[Table]:
    """The CSV or Parquet file at ``path`` as Tables of ``chunk_rows`` rows (the last one shorter)."""
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        yield from csv_tables(path, chunk_rows)
        return
    first, parts, size = 0, [], 0
    for columns in iter_parquet(path, chunk_rows):  # batches end early at row-group ends: cut them anew
        parts.append(columns)
        size += len(next(iter(columns.values())))
        while size >= chunk_rows:
            joined = _join(parts)
            yield Table(path.name, {n: v[:chunk_rows] for n, v in joined.items()}, None, first, "row")
            parts, size, first = [{n: v[chunk_rows:] for n, v in joined.items()}], size - chunk_rows, first + chunk_rows
    if size:
        yield Table(path.name, _join(parts), None, first, "row")


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class Moments:
    """Count, mean and standard deviation of rows (n, C) added chunk by chunk (sums about the first row seen)."""

    def __init__(self, width: int) -> None:
        self.count, self.total, self.squares = 0, np.zeros(width), np.zeros(width)
        self.shift: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        if self.shift is None:
            self.shift = rows[0].copy()
        centred = rows - self.shift
        self.count += len(rows)
        self.total += centred.sum(axis=0)
        self.squares += (centred**2).sum(axis=0)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) mean and population standard deviation (0 becomes 1, as a whole-file fit does)."""
        mean = self.total / max(self.count, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.count, 1) - mean**2, 0.0))
        return mean + (0 if self.shift is None else self.shift), np.where(std > 0, std, 1.0)
