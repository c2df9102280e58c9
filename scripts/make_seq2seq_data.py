"""Generate grukit's bundled seq2seq datasets (run once from the repository root; not a grukit dependency):

    pip install babel==2.19.0 num2words==0.5.14
    python scripts/make_seq2seq_data.py

``grukit/data/dates.csv.gz``: dates written in 10 locales and 4 CLDR styles (plus a few English patterns), by
babel, paired with the ISO 8601 date (``4 mars 2015`` -> ``2015-03-04``). Every date from 1950-01-01 to
2049-12-31 is formatted in every style first, and a written form that two different dates share (``4/3/15`` is
4 March in es_ES and 3 April in en_US) is never sampled, so each source has exactly one right answer.

``grukit/data/numbers.csv.gz``: whole numbers 0 .. 999,999 (log-uniform, half of them with thousands
separators) paired with their English words by num2words (``1,234`` -> ``one thousand, two hundred and
thirty-four``).

Both are seeded and gzipped with a fixed time stamp: running the script again gives byte-identical files.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import random
from collections import defaultdict
from pathlib import Path

from babel.dates import format_date
from num2words import num2words

OUT = Path(__file__).resolve().parent.parent / "grukit" / "data"
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "sv_SE", "pl_PL")
STYLES = ("short", "medium", "long", "full")
ENGLISH_PATTERNS = ("d MMM yy", "MMMM d y", "EEE, d MMM y", "y/MM/dd", "dd MMMM, y")
FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)
PAIRS = 10_000


def write_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(text.getvalue().encode("utf-8"))


def date_styles() -> list[tuple[str, str]]:
    """(locale, CLDR style or babel pattern) pairs."""
    return [(loc, style) for loc in LOCALES for style in STYLES] + [("en_US", p) for p in ENGLISH_PATTERNS]


def dates() -> list[list[str]]:
    days = [FIRST + datetime.timedelta(n) for n in range((LAST - FIRST).days + 1)]
    styles = date_styles()
    meaning: dict[str, set[datetime.date]] = defaultdict(set)
    for locale, style in styles:
        for day in days:
            meaning[format_date(day, style, locale=locale)].add(day)
    rng = random.Random(2026)
    rows, seen = [], set()
    while len(rows) < PAIRS:
        day = rng.choice(days)
        locale, style = rng.choice(styles)
        source = format_date(day, style, locale=locale)
        if len(meaning[source]) == 1 and source not in seen:
            seen.add(source)
            rows.append([source, day.isoformat(), locale])
    return rows


def numbers() -> list[list[str]]:
    rng = random.Random(2027)
    rows, seen = [], set()
    while len(rows) < PAIRS:
        n = int(10 ** rng.uniform(0, 6)) - 1 + rng.randint(0, 1)
        n = min(n, 999_999)
        source = f"{n:,}" if rng.random() < 0.5 else str(n)
        if source not in seen:
            seen.add(source)
            rows.append([source, num2words(n)])
    return rows


if __name__ == "__main__":
    write_gz(OUT / "dates.csv.gz", ["source", "target", "locale"], dates())
    write_gz(OUT / "numbers.csv.gz", ["source", "target"], numbers())
    for name in ("dates.csv.gz", "numbers.csv.gz"):
        print(name, (OUT / name).stat().st_size, "bytes")
