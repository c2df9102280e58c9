"""Seq2seq data: (source, target) string pairs from a bundled dataset or a CSV / TSV file, checked, turned into
character vocabularies and padded index tensors.

Columns: ``columns=SOURCE,TARGET`` (auto: the columns named "source" and "target", else the first two). A
``.tsv`` or ``.tab`` file is read tab-separated. Leading and trailing spaces of a cell are ignored. The target
may be missing (or empty everywhere) at predict time.

Characters: the vocabularies are the characters of the training file. A source character the model has never
seen is an error at val or predict time naming the row and the character (no ``<unk>`` guessing); a target
character it has never seen only counts as an error of the model in the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grukit.errors import DataError
from grukit.tasks.forecast.data import Table, read_table, require_column

DEFAULT_DATA = "dates"
PAD, BOS, EOS = 0, 1, 2
SPECIALS = 3  # ids below this are PAD, BOS, EOS; character i of a vocabulary has id SPECIALS + i


@dataclass
class Pairs:
    """Checked string pairs: sources (N,) and targets (N,) (None when the data has no targets)."""

    table: Table
    input_name: str
    target_name: str
    sources: list[str]
    targets: list[str] | None

    @property
    def label(self) -> str:
        return self.table.label

    def where(self, row: int, column: str) -> str:
        """'pairs.csv line 12, column 'source'' for data row ``row`` (0-based)."""
        return self.table.where(row, column)


def _text(column: np.ndarray) -> list[str]:
    return [str(value).strip() for value in column]


def _columns(setting: str | list[str], table: Table) -> tuple[str, str]:
    """(source column, target column) from the ``columns`` setting: auto, [source] or [source, target]."""
    names = list(table.columns)
    if setting == "auto":
        source = "source" if "source" in names else names[0]
        rest = [n for n in names if n != source]
        return source, "target" if "target" in rest else (rest[0] if rest else "target")
    if not 1 <= len(setting) <= 2:
        raise DataError(f"columns={','.join(setting)}: give the source column and the target column, e.g. columns=a,b")
    return setting[0], setting[-1] if len(setting) == 2 else "target"


def load_pairs(data: str, columns: str | list[str] = "auto", max_length: int = 0, training: bool = True) -> Pairs:
    """Read and check ``data`` (bundled name or CSV/TSV path); see the module docstring.

    training: every row needs a non-empty source and target. Otherwise the target column may be missing or
    empty (then ``targets`` is None); a partly filled target column is an error. A cell longer than
    ``max_length`` characters (0: no limit) is an error.
    """
    table = read_table(DEFAULT_DATA if data == "auto" else data)
    input_name, target_name = _columns(columns, table)
    require_column(table, input_name, "source")
    if input_name == target_name:
        raise DataError(f"{table.label}: column {input_name!r} is both the source and the target; give each its own")
    if training:
        if len(table.columns) < 2:
            raise DataError(
                f"{table.label} has one column ({input_name}); seq2seq training needs a source and a target column"
            )
        require_column(table, target_name, "target")
    sources = _text(table.columns[input_name])
    targets = _text(table.columns[target_name]) if target_name in table.columns else None
    if not training and targets is not None and not any(targets):
        targets = None
    for column, values in ((input_name, sources), (target_name, targets)):
        if values is None:
            continue
        for row, text in enumerate(values):
            if not text:
                raise DataError(f"{table.where(row, column)}: empty cell; every row needs a {column} (remove the row)")
            if max_length and len(text) > max_length:
                raise DataError(
                    f"{table.where(row, column)}: {len(text)} characters, more than max_length={max_length}; "
                    f"shorten it or set max_length={len(text)}"
                )
    return Pairs(table, input_name, target_name, sources, targets)


def vocabulary(texts: list[str]) -> str:
    """The distinct characters of ``texts``, sorted, as one string (character i has id SPECIALS + i)."""
    return "".join(sorted(set("".join(texts))))


def encode_sources(pairs: Pairs, chars: str) -> list[np.ndarray]:
    """Each source as (len,) int64 character ids; DataError naming the row of a character not in ``chars``."""
    lookup = {c: i + SPECIALS for i, c in enumerate(chars)}
    out = []
    for row, text in enumerate(pairs.sources):
        try:
            out.append(np.array([lookup[c] for c in text], dtype=np.int64))
        except KeyError as err:
            char = err.args[0]
            raise DataError(
                f"{pairs.where(row, pairs.input_name)}: character {char!r} (U+{ord(char):04X}) is not in the "
                f"model's {len(chars)} source characters; remove or replace it, or retrain on data that has it"
            ) from None
    return out


def encode_targets(targets: list[str], chars: str) -> list[np.ndarray]:
    """Each target as (len + 1,) int64 ids ending with EOS; characters not in ``chars`` must not occur."""
    lookup = {c: i + SPECIALS for i, c in enumerate(chars)}
    return [np.array([lookup[c] for c in text] + [EOS], dtype=np.int64) for text in targets]


def decode(ids: list[int], chars: str) -> str:
    """Character ids (stopping at the first EOS; PAD and BOS skipped) back to text."""
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= SPECIALS:
            out.append(chars[i - SPECIALS])
    return "".join(out)


def pad(sequences: list[np.ndarray], length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences (each (len,)) right-padded with PAD to (T, B) int64 (T: the longest, or ``length`` if larger),
    and their lengths (B,) int64."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = np.full((max(int(lengths.max()), length), len(sequences)), PAD, dtype=np.int64)
    for b, s in enumerate(sequences):
        out[: len(s), b] = s
    return out, lengths


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded random "train", "val", "test" row indices (each sorted): test a ``test_fraction`` of the rows, val
    a ``val_fraction`` of the rest. DataError when a part would be empty."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * (n - n_test))
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    if min(len(p) for p in parts.values()) == 0:
        raise DataError(
            f"{n} pairs are too few for a train/validation/test split; add pairs or change val_fraction / test_fraction"
        )
    return {name: np.sort(index) for name, index in parts.items()}
