"""Generate grukit's bundled text dataset ``grukit/data/word_languages.csv.gz`` (run once from the repository root):

    apt-get install -y wamerican wfrench wngerman wspanish witalian
    python scripts/make_word_languages.py

Character-level language identification of single words: 2,000 words from each of the Debian word lists of
English (wamerican 2020.12.07-2), French (wfrench 1.2.7-2), German (wngerman 20161207-11), Spanish (wspanish
1.0.30) and Italian (witalian 1.10). Words are lowercased; only words of 3 to 20 letters (no apostrophes,
hyphens or digits) that appear in exactly one of the five lists are kept, so every word has one right answer.
400 words of each language are marked ``split=test``. Seeded and gzipped with a fixed time stamp: running the
script again on the same package versions gives a byte-identical file.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
from pathlib import Path

LISTS = {
    "english": "/usr/share/dict/american-english",
    "french": "/usr/share/dict/french",
    "german": "/usr/share/dict/ngerman",
    "spanish": "/usr/share/dict/spanish",
    "italian": "/usr/share/dict/italian",
}
PER_LANGUAGE, TEST_PER_LANGUAGE = 2000, 400
LETTERS = re.compile(r"[a-zà-öø-ÿœß]{3,20}")
OUT = Path("grukit/data/word_languages.csv.gz")


def words(path: str) -> set[str]:
    """The lowercased words of a word list that are 3 to 20 letters."""
    text = Path(path).read_text(encoding="utf-8")
    return {w for w in (line.strip().lower() for line in text.splitlines()) if LETTERS.fullmatch(w)}


def main() -> None:
    vocab = {language: words(path) for language, path in LISTS.items()}
    rng = random.Random(0)
    rows = []
    for language, own in vocab.items():
        others = set().union(*(v for k, v in vocab.items() if k != language))
        chosen = rng.sample(sorted(own - others), PER_LANGUAGE)
        rows += [[w, language, "test" if i < TEST_PER_LANGUAGE else "train"] for i, w in enumerate(chosen)]
    rng.shuffle(rows)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["word", "language", "split"])
    writer.writerows(rows)
    with gzip.GzipFile(OUT, "wb", mtime=0) as handle:
        handle.write(text.getvalue().encode())
    print(f"{OUT}: {len(rows)} words, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
