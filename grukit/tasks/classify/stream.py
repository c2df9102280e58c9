"""Classify data bigger than memory (``stream=true``): numeric sequences in long format read from a CSV or
Parquet file in chunks of ``CHUNK_ROWS`` rows, never whole. The rows of each sequence must be together (the file
grouped by sequence id); a sequence may cross chunk boundaries (its rows wait for the next chunk's).

Each pass checks every chunk's complete sequences with ``table_sequences``, as a whole-file load does:

- ``open_stream`` (the scan): the checks, that each sequence's rows are together, the labels, and whether the
  split column marks test or val sequences;
- ``SequenceStream.statistics``: the validation and test sequences (kept in memory), the feature mean and
  standard deviation over the training rows, and the training sequences per chunk and per class;
- ``SequenceStream.batches`` (each epoch): a share ``sample`` of each chunk's training sequences, drawn from the
  epoch's seeded generator, through a shuffle buffer of ``SHUFFLE`` sequences.

Split: sequences marked test (val) in a split column when the file marks any; else a seeded hash of the sequence
id puts a share ``test_fraction`` in test and ``val_fraction`` of the others in validation (not stratified, as
the in-memory split is). Memory: one chunk, the shuffle buffer, the validation and test sequences and the set of
sequence ids the scan keeps to check that each sequence's rows are together; not the file size.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grukit.errors import DataError
from grukit.tasks.classify.data import (
    Columns,
    Sequences,
    check_split,
    joined,
    padded,
    resolve_columns,
    table_sequences,
    text_values,
)
from grukit.tasks.forecast.data import Table
from grukit.tasks.tables import Moments, file_tables, stream_path

CHUNK_ROWS = 10_000  # rows read at a time (wide rows of many features: 10,000 rows of 200 take 16 MB)
SHUFFLE = 1024  # training sequences the shuffle buffer holds (standardised, float32)


def _rows(table: Table, start: int, stop: int) -> Table:
    return replace(
        table, columns={n: v[start:stop] for n, v in table.columns.items()}, first_line=table.first_line + start
    )


def _check_together(table: Table, id_name: str, ids: np.ndarray, seen: set[str]) -> None:
    """DataError when a sequence of ``ids`` (the table's (N,) ids) starts again after other sequences."""
    for row in np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]):
        if ids[row] in seen:
            raise DataError(
                f"{table.where(int(row), id_name)}: sequence {ids[row]!r} continues here after other sequences; "
                f"stream=true needs the rows of each sequence together (sort the file by {id_name})"
            )
        seen.add(ids[row])


def chunk_sequences(tables: Iterator[Table], columns: Columns, seen: set[str] | None = None) -> Iterator[Sequences]:
    """The complete sequences of each table (chunk) in turn, checked by ``table_sequences``; the rows of the
    sequence that runs to a chunk's end join the next chunk. ``seen``: the ids met so far, to check that each
    sequence's rows are together (None: no check)."""
    carry: Table | None = None
    for table in tables:
        if carry is not None:
            table = replace(carry, columns={n: np.concatenate([v, table.columns[n]]) for n, v in carry.columns.items()})
        ids = text_values(table.columns[columns[0]])
        others = np.flatnonzero(ids != ids[-1])
        cut = int(others[-1]) + 1 if len(others) else 0  # the last sequence's first row
        carry = _rows(table, cut, len(ids))
        if cut:
            head = _rows(table, 0, cut)
            if seen is not None:
                _check_together(head, columns[0], ids[:cut], seen)
            yield table_sequences(head, columns)
    if carry is not None:
        if seen is not None:
            _check_together(carry, columns[0], text_values(carry.columns[columns[0]]), seen)
        yield table_sequences(carry, columns)


def _unit(seed: int, salt: str, ids: list[str]) -> np.ndarray:
    """(S,) numbers in [0, 1) hashed from the seed, ``salt`` and each sequence id."""
    digests = (hashlib.blake2b(f"{seed}/{salt}/{sid}".encode(), digest_size=8).digest() for sid in ids)
    return np.array([int.from_bytes(d, "big") / 2**64 for d in digests])


@dataclass
class SequenceStream:
    """The streamed file and what the passes found: its ``columns`` (id, time, label, features), the split
    values the file ``marked`` ("test", "val"), the split settings, and after ``statistics`` the training
    sequences of each chunk and of each class (label -> count)."""

    path: Path
    columns: Columns
    marked: set[str]
    seed: int
    val_fraction: float
    test_fraction: float
    sample: float
    chunk_rows: int
    train_per_chunk: list[int] = field(default_factory=list)
    train_labels: Counter[str] = field(default_factory=Counter)

    def sequences(self) -> Iterator[Sequences]:
        """The file's sequences, checked, a chunk at a time."""
        return chunk_sequences(file_tables(self.path, self.chunk_rows), self.columns)

    def parts(self, seqs: Sequences) -> np.ndarray:
        """(S,) "train", "val" or "test" for each of ``seqs`` (see the module docstring)."""
        if "test" in self.marked:
            test = seqs.split == "test"
        else:
            test = _unit(self.seed, "test", seqs.ids) < self.test_fraction
        val = seqs.split == "val" if "val" in self.marked else _unit(self.seed, "val", seqs.ids) < self.val_fraction
        return np.where(test, "test", np.where(val, "val", "train"))

    def statistics(self) -> tuple[Sequences, np.ndarray, Moments]:
        """Read the file once: the validation and test sequences, their (K,) parts ("val", "test"), the moments
        of the training rows' features; sets ``train_per_chunk`` and ``train_labels``. DataError when a part is
        empty."""
        held: list[Sequences] = []
        held_parts: list[np.ndarray] = []
        moments = Moments(len(self.columns[3]))
        total = 0
        self.train_per_chunk, self.train_labels = [], Counter()
        for seqs in self.sequences():
            part = self.parts(seqs)
            total += len(part)
            train = part == "train"
            self.train_per_chunk.append(int(train.sum()))
            self.train_labels.update(seqs.labels[train])
            moments.add(seqs.values[np.repeat(train, seqs.lengths)])
            if not train.all():
                held.append(seqs.select(np.flatnonzero(~train)))
                held_parts.append(part[~train])
        parts = np.concatenate(held_parts) if held_parts else np.zeros(0, dtype=object)
        counts = (sum(self.train_per_chunk), int((parts == "val").sum()), int((parts == "test").sum()))
        check_split(self.path.name, total, *counts)
        return joined(held), parts, moments

    def _drawn(self, count: int) -> int:
        return math.ceil(count * self.sample)

    def steps(self, batch: int) -> int:
        """Training batches per epoch."""
        return -(-sum(self._drawn(n) for n in self.train_per_chunk) // batch)

    def batches(
        self, rng: np.random.Generator, batch: int, mean: np.ndarray, std: np.ndarray, classes: list[str]
    ) -> Iterator[dict[str, Tensor]]:
        """One epoch of shuffled training batches, read chunk by chunk: x (T, B, F) float32 standardised features,
        lengths (B,) int64, y (B,) int64 class indices into ``classes``."""
        lookup = {name: i for i, name in enumerate(classes)}
        buffer: list[tuple[np.ndarray, int]] = []
        chosen: list[tuple[np.ndarray, int]] = []

        def drawn() -> Iterator[tuple[np.ndarray, int]]:
            for seqs in self.sequences():
                train = np.flatnonzero(self.parts(seqs) == "train")
                for s in rng.permutation(train)[: self._drawn(len(train))]:
                    rows = (seqs.values[seqs.offsets[s] : seqs.offsets[s + 1]] - mean) / std
                    buffer.append((rows.astype(np.float32), lookup[seqs.labels[s]]))
                    if len(buffer) == SHUFFLE:
                        pick = int(rng.integers(SHUFFLE))
                        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
                        yield buffer.pop()
            yield from (buffer[i] for i in rng.permutation(len(buffer)))

        for item in drawn():
            chosen.append(item)
            if len(chosen) == batch:
                yield _collate(chosen)
                chosen = []
        if chosen:
            yield _collate(chosen)


def _collate(items: list[tuple[np.ndarray, int]]) -> dict[str, Tensor]:
    """A batch of standardised sequences and their class indices (see ``SequenceStream.batches``)."""
    x, lengths = padded([values for values, _ in items], 0.0, 1.0)
    y = np.array([label for _, label in items], dtype=np.int64)
    return {"x": torch.from_numpy(x), "lengths": torch.from_numpy(lengths), "y": torch.from_numpy(y)}


def open_stream(cfg: dict[str, Any], given: dict[str, Any]) -> tuple[SequenceStream, set[str], str | None]:
    """Scan the file cfg["data"] (every check, see the module docstring) with the columns ``given`` (the config,
    or a checkpoint's meta): the stream, the labels met and the first sequence without one (None when none).
    ConfigError for a bundled dataset."""
    data = cfg["data"]
    path = stream_path(data)
    tables = file_tables(path, CHUNK_ROWS)
    first = next(tables)
    columns = resolve_columns(first, given["id"], given["time"], given["label"], given["features"])
    labels: set[str] = set()
    marked: set[str] = set()
    unlabelled = None
    for seqs in chunk_sequences(chain([first], tables), columns, seen=set()):
        labels.update(seqs.labels)
        marked.update(seqs.split)
        if unlabelled is None and "" in labels:
            unlabelled = seqs.ids[int(np.flatnonzero(seqs.labels == "")[0])]
    labels.discard("")
    split = (cfg["seed"], cfg["val_fraction"], cfg["test_fraction"])
    stream = SequenceStream(path, columns, marked, *split, cfg["sample"], CHUNK_ROWS)
    return stream, labels, unlabelled
