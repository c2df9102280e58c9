"""Classify data checks: one clear line per problem, naming the file, column and line."""

from __future__ import annotations

import numpy as np
import pytest

from grukit.errors import DataError
from grukit.tasks.classify.data import load_sequences, split_indices

GOOD = "seq,step,x,y,label\nA,1,0.5,1,cat\nA,0,0.1,2,cat\nB,0,1.0,3,dog\nB,1,2.0,4,dog\nB,2,3.0,5,dog\n"


def _csv(tmp_path, text: str):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return str(path)


def test_long_format_is_grouped_and_sorted(tmp_path):
    seqs = load_sequences(_csv(tmp_path, GOOD))
    assert seqs.ids == ["A", "B"] and list(seqs.lengths) == [2, 3] and seqs.feature_names == ["x", "y"]
    assert seqs.values[:2, 0].tolist() == [0.1, 0.5] and list(seqs.labels) == ["cat", "dog"]
    x, lengths = seqs.padded(np.array([0, 1]), np.zeros(2), np.ones(2))
    assert x.shape == (3, 2, 2) and lengths.tolist() == [2, 3] and x[2, 0].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "d.csv is empty"),
        (GOOD, {"label": "lable"}, "no label column 'lable' (did you mean 'label'?)"),
        (GOOD, {"features": ["x", "z"]}, "no feature column 'z'"),
        (GOOD.replace("0.5", "abc"), {"features": ["x", "y"]}, "d.csv line 2, column 'x': 'abc' is not a number"),
        (GOOD.replace("3.0,5,dog", "3.0,5,cat"), {}, "d.csv line 6, column 'label': sequence 'B' has label 'cat'"),
        (GOOD.replace("B,2,", "B,1,"), {}, "sequence 'B' has step 1 twice"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, text, kwargs, message):
    with pytest.raises(DataError) as caught:
        load_sequences(_csv(tmp_path, text), **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bundled_japanese_vowels_keeps_the_official_split():
    seqs = load_sequences("japanese_vowels")
    assert len(seqs.ids) == 640 and len(seqs.feature_names) == 12 and sorted(set(seqs.labels)) == list("123456789")
    assert seqs.lengths.min() == 7 and seqs.lengths.max() == 29
    train, val, test = split_indices(seqs, 0.2, 0.2, seed=0)
    assert len(test) == 370 and len(train) + len(val) == 270 and not set(test) & set(train)
