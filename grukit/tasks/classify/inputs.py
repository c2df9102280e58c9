"""What kind of input a classify run reads (numeric sequences, text or audio) and reading it with the run's
settings: the config's for a new model, the checkpoint's for a trained one.

``read_examples`` returns the examples (``Sequences`` for numeric and audio data, ``Texts`` for text) and the
settings that a checkpoint keeps to read new data the same way ("input" names the kind), each a config key.
"""

from __future__ import annotations

import csv
from itertools import islice
from pathlib import Path
from typing import Any

from grukit.data.bundled import names as bundled_names
from grukit.tasks.classify.audio import load_audio
from grukit.tasks.classify.data import DEFAULT_DATA, SPLIT, Sequences, load_sequences
from grukit.tasks.classify.text import Texts, load_texts

BUNDLED_TEXT = ("word_languages",)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_numeric_long(path: Path, cfg: dict[str, Any]) -> bool:
    """Whether the CSV at ``path`` looks like numeric sequences in long format, from its first 50 rows: a
    numeric second (step) column and a numeric feature column besides id, step, label and split."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            header, *rows = list(islice(csv.reader(handle), 51))
    except (UnicodeDecodeError, csv.Error, ValueError):
        return True  # not readable as text: the numeric reader reports the problem
    if "text" in header or len(header) < 3:
        return False
    rows = [row for row in rows if len(row) == len(header)]
    numeric = [all(_is_number(row[i].strip()) for row in rows if row[i].strip()) for i in range(len(header))]
    label = cfg["label"] if cfg["label"] != "auto" else "label" if "label" in header else header[-1]
    rest = [n for i, n in enumerate(header[2:], start=2) if numeric[i] and n not in (label, SPLIT)]
    return bool(rows) and numeric[1] and bool(rest)


def detect_input(cfg: dict[str, Any]) -> str:
    """The input kind of cfg["data"]: cfg["input"] unless auto; auto: audio for a folder or a .wav file; text
    for a bundled text dataset, when ``text`` is set, or for a CSV that does not look like numeric sequences
    (see ``_looks_numeric_long``); else numeric."""
    if cfg["input"] != "auto":
        return cfg["input"]
    data = DEFAULT_DATA if cfg["data"] == "auto" else cfg["data"]
    if data in bundled_names():
        return "text" if data in BUNDLED_TEXT else "numeric"
    path = Path(data).expanduser()
    if path.is_dir() or path.suffix.lower() == ".wav":
        return "audio"
    if cfg["text"] != "auto":
        return "text"
    if cfg["time"] != "auto" or cfg["features"] != "auto" or not path.is_file():
        return "numeric"
    return "numeric" if _looks_numeric_long(path, cfg) else "text"


def read_examples(cfg: dict[str, Any], meta: dict[str, Any] | None) -> tuple[Sequences | Texts, dict[str, Any]]:
    """The examples of cfg["data"] and the settings they were read with (from ``meta`` when given)."""
    kind = meta.get("input", "numeric") if meta is not None else detect_input(cfg)
    given = meta if meta is not None else cfg
    if kind == "audio":
        seqs, rate = load_audio(cfg["data"], given["sample_rate"], given["mels"], given["max_length"])
        return seqs, {"input": kind, "sample_rate": rate, "mels": given["mels"], "max_length": given["max_length"]}
    if kind == "text":
        texts = load_texts(cfg["data"], given["text"], given["label"], given["id"], unlabelled=meta is not None)
        settings = {key: given[key] for key in ("tokens", "lowercase", "min_count", "max_length")}
        return texts, {
            "input": kind,
            "text": texts.text_name,
            "label": texts.label_name,
            "id": texts.id_name,
            **settings,
        }
    seqs = load_sequences(cfg["data"], given["id"], given["time"], given["label"], given["features"])
    columns = {"id": seqs.id_name, "time": seqs.time_name, "label": seqs.label_name, "features": seqs.feature_names}
    return seqs, {"input": kind, **columns}
