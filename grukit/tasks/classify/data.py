"""Classify data: numeric sequences in long format, one row per (sequence, step), read from a bundled dataset,
a CSV or a Parquet file and checked (``stream.py`` reads a file bigger than memory chunk by chunk).

Columns: a sequence id (``id``), the step order within a sequence (``time``: numbers), one or more numeric
feature columns (``features``), the class (``label``, the same on every row of a sequence; may be empty at
predict time) and optionally ``split`` (train, val or test) to fix the test (and validation) sequences.
Sequences may differ in length.
Every problem is a one-line ``DataError`` naming the file, column and line, and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from grukit.errors import DataError
from grukit.tasks.forecast.data import Table, looks_numeric, read_table, require_column, to_numbers

DEFAULT_DATA = "japanese_vowels"
SPLIT = "split"
PARTS = ("train", "val", "test")  # the values of a split column (or empty)


@dataclass
class Sequences:
    """Checked sequences. values: (N, F) float64 rows grouped by sequence and sorted by step; offsets: (S + 1,)
    row offsets of each sequence; labels: S strings ("" when unlabelled); split: S strings ("" when none)."""

    label: str
    id_name: str
    time_name: str
    label_name: str
    feature_names: list[str]
    ids: list[str]
    values: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    split: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, index: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sequences ``index`` (B,) standardised and zero-padded: (T, B, F) float32 and lengths (B,) int64."""
        return padded([self.values[self.offsets[s] : self.offsets[s + 1]] for s in index], mean, std)

    def select(self, index: np.ndarray) -> Sequences:
        """The sequences ``index`` (K,) only, in that order."""
        parts = [self.values[self.offsets[s] : self.offsets[s + 1]] for s in index]
        values = np.concatenate(parts) if parts else np.zeros((0, self.values.shape[1]))
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        ids, labels, split = [self.ids[s] for s in index], self.labels[index], self.split[index]
        return replace(self, ids=ids, values=values, offsets=offsets, labels=labels, split=split)


def padded(rows: list[np.ndarray], mean: np.ndarray | float, std: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Sequences ``rows`` (B of them, (L_b, F) each) standardised ((F,) or scalar ``mean`` and ``std``) and
    zero-padded: (T, B, F) float32 and lengths (B,) int64."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.zeros((int(lengths.max()), len(rows), rows[0].shape[1]), dtype=np.float32)
    for b, r in enumerate(rows):
        out[: lengths[b], b] = (r - mean) / std
    return out, lengths


def joined(parts: list[Sequences]) -> Sequences:
    """Sequences of the same columns one after another (``parts`` not empty)."""
    offsets = [parts[0].offsets[:1]]
    for p in parts:
        offsets.append(p.offsets[1:] + offsets[-1][-1])
    return replace(
        parts[0],
        ids=[i for p in parts for i in p.ids],
        values=np.concatenate([p.values for p in parts]),
        offsets=np.concatenate(offsets),
        labels=np.concatenate([p.labels for p in parts]),
        split=np.concatenate([p.split for p in parts]),
    )


def text_values(values: np.ndarray) -> np.ndarray:
    """(N,) values as stripped strings (object array); integers converted at once."""
    if values.dtype.kind in "iu":
        return values.astype(str).astype(object)
    return np.array([str(v).strip() for v in values], dtype=object)


Columns = tuple[str, str, str, list[str]]  # the id, time (step) and label columns and the feature columns


def load_sequences(
    data: str, id_name: str = "auto", time: str = "auto", label: str = "auto", features: str | list[str] = "auto"
) -> Sequences:
    """Read and check the long-format table ``data`` (bundled name, CSV or Parquet path); see the module
    docstring and ``resolve_columns``."""
    table = read_table(DEFAULT_DATA if data == "auto" else data)
    return table_sequences(table, resolve_columns(table, id_name, time, label, features))


def resolve_columns(
    table: Table, id_name: str = "auto", time: str = "auto", label: str = "auto", features: str | list[str] = "auto"
) -> Columns:
    """The columns of ``table`` in each role, checked. id auto: the first column; time auto: the second; label
    auto: a column named "label", else the last column (other than split); features auto: every other numeric
    column (of ``table``: a streamed file's first chunk)."""
    names = list(table.columns)
    if len(names) < 3:
        raise DataError(f"{table.label} has {len(names)} columns; classify needs id, step, feature(s) and label")
    id_name = names[0] if id_name == "auto" else id_name
    time_name = names[1] if time == "auto" else time
    if label == "auto":
        label = "label" if "label" in names else [n for n in names if n != SPLIT][-1]
    for name, role in ((id_name, "sequence id"), (time_name, "step order (time)"), (label, "label")):
        require_column(table, name, role)
    fixed = {id_name, time_name, label, SPLIT}
    if features == "auto":
        features = [n for n in names if n not in fixed and looks_numeric(table.columns[n])]
        if not features:
            raise DataError(f"{table.label}: no numeric feature columns; set features=COLUMN,COLUMN")
    for name in features:
        require_column(table, name, "feature")
        if name in fixed:
            raise DataError(f"column {name!r} is both a feature and the id, time, label or split; give it one role")
    return id_name, time_name, label, list(features)


def table_sequences(table: Table, columns: Columns) -> Sequences:
    """The sequences of ``table`` (rows of a sequence anywhere in it), checked: numbers, no missing values or
    steps, one label and split per sequence, no step twice."""
    id_name, time_name, label, features = columns
    values = np.stack([_finite(table, name) for name in features], axis=1)
    steps = to_numbers(table, time_name, table.columns[time_name])
    missing = np.flatnonzero(~np.isfinite(steps))
    if len(missing):
        raise DataError(f"{table.where(int(missing[0]), time_name)}: missing step; every row needs its step order")
    ids = text_values(table.columns[id_name])
    labels = text_values(table.columns[label])
    split = text_values(table.columns[SPLIT]) if SPLIT in table.columns else np.full(len(ids), "", dtype=object)
    bad = np.flatnonzero(~np.isin(split, ["", *PARTS]))
    if len(bad):
        raise DataError(f"{table.where(int(bad[0]), SPLIT)}: {split[bad[0]]!r} is not train, val or test")
    unique, first, group = np.unique(ids, return_index=True, return_inverse=True)
    order_of_first = np.argsort(first)  # sequences in order of first appearance
    rank = np.empty(len(unique), dtype=np.int64)
    rank[order_of_first] = np.arange(len(unique))
    rows = np.lexsort((steps, rank[group]))
    seq = rank[group][rows]
    offsets = np.searchsorted(seq, np.arange(len(unique) + 1))
    for s in range(len(unique)):
        part = rows[offsets[s] : offsets[s + 1]]
        for column, what in ((labels, "label"), (split, "split")):
            changed = np.flatnonzero(column[part] != column[part[0]])
            if len(changed):
                row = int(part[changed[0]])
                name = label if what == "label" else SPLIT
                raise DataError(
                    f"{table.where(row, name)}: sequence {ids[row]!r} has {what} {column[row]!r} here and "
                    f"{column[part[0]]!r} before; one {what} per sequence"
                )
        repeated = np.flatnonzero(np.diff(steps[part]) == 0)
        if len(repeated):
            row = int(part[repeated[0] + 1])
            raise DataError(f"{table.where(row, time_name)}: sequence {ids[row]!r} has step {steps[row]:g} twice")
    heads = rows[offsets[:-1]]
    return Sequences(
        label=table.label,
        id_name=id_name,
        time_name=time_name,
        label_name=label,
        feature_names=features,
        ids=[str(ids[r]) for r in heads],
        values=values[rows],
        offsets=offsets,
        labels=labels[heads],
        split=split[heads],
    )


def _finite(table: Table, name: str) -> np.ndarray:
    values = to_numbers(table, name, table.columns[name])
    missing = np.flatnonzero(~np.isfinite(values))
    if len(missing):
        raise DataError(f"{table.where(int(missing[0]), name)}: missing value (empty or NaN); fill it")
    return values


def split_indices(
    seqs: Sequences, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) sequence indices. Test: the rows marked split=test when the data has a split column,
    else a stratified ``test_fraction``; val: those marked split=val, else a stratified ``val_fraction`` of the
    rest. Seeded."""
    rng = np.random.default_rng(seed)
    everything = np.arange(len(seqs.ids))
    if (seqs.split == "test").any():
        test = everything[seqs.split == "test"]
        rest = everything[seqs.split != "test"]
    else:
        rest, test = _stratified(everything, seqs.labels, test_fraction, rng)
    if (seqs.split == "val").any():
        train, val = rest[seqs.split[rest] != "val"], rest[seqs.split[rest] == "val"]
    else:
        train, val = _stratified(rest, seqs.labels, val_fraction, rng)
    check_split(seqs.label, len(everything), len(train), len(val), len(test))
    return train, val, test


def check_split(label: str, total: int, train: int, val: int, test: int) -> None:
    """DataError when the training, validation or test part (counts of sequences) is empty."""
    if not train or not val or not test:
        raise DataError(
            f"{label}: {total} sequences are too few for a train/validation/test split; "
            "add sequences or change val_fraction / test_fraction"
        )


def _stratified(
    index: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    keep, held = [], []
    for cls in sorted(set(labels[index])):
        members = rng.permutation(index[labels[index] == cls])
        count = round(fraction * len(members))
        held.append(members[:count])
        keep.append(members[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))
