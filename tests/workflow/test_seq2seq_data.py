"""Seq2seq data: the bundled sets, CSV and TSV pairs, column choice, the split, and one clear error per bad input."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from grukit.data import bundled
from grukit.errors import DataError
from grukit.tasks.seq2seq.data import decode, encode_sources, load_pairs, pad, split_indices, vocabulary


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("name", "first"), [("dates", 0), ("numbers", 0)])
def test_bundled_sets_read_back_exactly(name, first):
    path = Path(bundled.__file__).with_name(f"{name}.csv.gz")
    assert path.stat().st_size < 300_000
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        raw = list(csv.reader(handle))[1:]
    pairs = load_pairs(name)
    assert len(pairs.sources) == len(raw) == 10_000
    assert pairs.sources == [r[0] for r in raw] and pairs.targets == [r[1] for r in raw]
    assert len(set(pairs.sources)) == len(pairs.sources)  # one right answer per source


def test_dates_targets_are_iso_dates():
    pairs = load_pairs("dates")
    days = np.array(pairs.targets, dtype="datetime64[D]")  # raises on anything not ISO 8601
    assert [str(d) for d in days] == pairs.targets
    assert load_pairs("auto").sources == pairs.sources  # the default data


def test_columns_auto_and_chosen(tmp_path):
    data = write(tmp_path / "p.csv", "id,target,source\n1,b,a\n2,d,c\n")
    pairs = load_pairs(data)
    assert (pairs.input_name, pairs.target_name) == ("source", "target")
    assert (pairs.sources, pairs.targets) == (["a", "c"], ["b", "d"])
    data = write(tmp_path / "q.csv", "question,answer,note\n hi there ,yo,x\n")
    pairs = load_pairs(data)
    assert (pairs.input_name, pairs.target_name, pairs.sources) == ("question", "answer", ["hi there"])
    pairs = load_pairs(data, ["note", "question"])
    assert (pairs.sources, pairs.targets) == (["x"], ["hi there"])


def test_tsv_is_read_tab_separated(tmp_path):
    data = write(tmp_path / "p.tsv", "source\ttarget\n1,234\tone thousand, two hundred and thirty-four\n")
    pairs = load_pairs(data)
    assert pairs.sources == ["1,234"] and pairs.targets == ["one thousand, two hundred and thirty-four"]


def test_predict_data_may_lack_targets(tmp_path):
    assert load_pairs(write(tmp_path / "a.csv", "source\nabc\n"), training=False).targets is None
    assert load_pairs(write(tmp_path / "b.csv", "source,target\nabc,\nd,\n"), training=False).targets is None


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, r"p.csv is empty"),
        ("source,target\n", {}, r"p.csv has a header but no data rows"),
        ("source,target\nab,c\n", {"columns": ["src", "tgt"]}, r"no source column 'src' \(did you mean 'source'\?\)"),
        ("source,answer\nab,c\n", {"columns": ["source", "target"]}, r"p.csv has no target column 'target'"),
        ("source\nab\n", {}, r"p.csv has one column \(source\); seq2seq training needs a source and a target"),
        ("source,target\nab,c\n,d\n", {}, r"p.csv line 3, column 'source': empty cell; every row needs a source"),
        ("source,target\nab,c\nd,\n", {}, r"p.csv line 3, column 'target': empty cell"),
        ("source,target\nab,c\nd,\n", {"training": False}, r"line 3, column 'target': empty cell"),
        (
            "source,target\nabcdef,c\n",
            {"max_length": 5},
            r"line 2, column 'source': 6 characters, more than max_length=5; shorten it or set max_length=6",
        ),
        ("source,target\na,b\n", {"columns": ["source", "source"]}, r"'source' is both the source and the target"),
        ("source,target\na,b\n", {"columns": ["a", "b", "c"]}, r"columns=a,b,c: give the source column and the target"),
        ("source,target\na,b,c\n", {}, r"p.csv line 2: 3 fields where the header has 2"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, text, kwargs, message):
    data = write(tmp_path / "p.csv", text)
    with pytest.raises(DataError, match=message):
        load_pairs(data, **kwargs)


def test_unseen_source_characters_name_the_row_and_character(tmp_path):
    pairs = load_pairs(write(tmp_path / "p.csv", "source,target\nabc,x\naßc,y\n"), training=False)
    message = r"p.csv line 3, column 'source': character 'ß' \(U\+00DF\) is not in the model's 3 source characters"
    with pytest.raises(DataError, match=message):
        encode_sources(pairs, vocabulary(["abc"]))


def test_vocabulary_encoding_and_padding_round_trip():
    chars = vocabulary(["héllo", "world"])
    assert chars == "dhlorwé"  # sorted by code point: é (U+00E9) last
    pairs = load_pairs("dates")
    ids = encode_sources(pairs, vocabulary(pairs.sources))[:3]
    padded, lengths = pad(ids, length=40)
    assert padded.shape == (40, 3) and list(lengths) == [len(s) for s in pairs.sources[:3]]
    assert [decode(padded[:, b].tolist(), vocabulary(pairs.sources)) for b in range(3)] == pairs.sources[:3]


def test_split_is_seeded_disjoint_and_complete():
    parts = split_indices(100, 0.1, 0.2, seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [72, 8, 20]
    assert sorted(np.concatenate(list(parts.values()))) == list(range(100))
    again = split_indices(100, 0.1, 0.2, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    with pytest.raises(DataError, match="3 pairs are too few for a train/validation/test split"):
        split_indices(3, 0.1, 0.1, seed=0)
