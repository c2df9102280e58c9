"""Load the real datasets bundled with grukit, with numpy and the standard library only.

Each dataset is one CSV file (optionally gzipped) in this folder; ``grukit/data/README.md`` gives its source,
licence, columns and units. ``load`` returns the columns as numpy arrays: a column of integers becomes int64,
of numbers float64, and of ISO 8601 dates or times datetime64 (``1949-01`` -> ``datetime64[M]``,
``2014-01-01T00:30`` -> ``datetime64[m]``).
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
_FILES = {
    "airline": "airline.csv",
    "elecdemand": "elecdemand.csv.gz",
    "sunspots": "sunspots.csv",
    "japanese_vowels": "japanese_vowels.csv.gz",
    "dates": "dates.csv.gz",
    "numbers": "numbers.csv.gz",
    "word_languages": "word_languages.csv.gz",
}


def names() -> list[str]:
    """The names ``load`` accepts, sorted."""
    return sorted(_FILES)


def _column(values: list[str]) -> np.ndarray:
    """One CSV column as int64, float64 or datetime64, whichever parses first, else text (object).
    values: N strings -> (N,)."""
    for dtype in (np.int64, np.float64, "datetime64"):
        try:
            return np.array(values, dtype=dtype)
        except ValueError:
            pass
    return np.array(values, dtype=object)


def load(name: str) -> dict[str, np.ndarray]:
    """The bundled dataset ``name`` as ``{column: (N,) array}``, columns in file order.

    ``elecdemand``: N = 17520, timestamp (datetime64[m]), demand (GW), workday (0/1), temperature (deg C).
    ``airline``: N = 144, month (datetime64[M]), passengers (thousands).
    ``sunspots``: N = 309, year (int), sunspots (yearly mean sunspot number).
    ``japanese_vowels``: N = 9961 rows of 640 sequences in long format: series (int), step (int), c1..c12
    (float, LPC coefficients), speaker (int, 1..9), split (text: train or test, the official UEA split).
    ``word_languages``: N = 10000 words (text), language (english, french, german, spanish, italian), split.
    ``dates``: N = 10000 pairs: source (text, a written date), target (datetime64[D]), locale (text).
    ``numbers``: N = 10000 pairs: source (text, digits), target (text, English words).
    Raises ValueError naming the available datasets when ``name`` is not one of them.
    """
    if name not in _FILES:
        raise ValueError(f"unknown bundled dataset {name!r}; available: {', '.join(names())}")
    path = _HERE / _FILES[name]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as text:
        header, *rows = list(csv.reader(text))
    return {column: _column(list(values)) for column, values in zip(header, zip(*rows, strict=True), strict=True)}
