"""Seq2seq metrics on hand-checked pairs: Levenshtein distance, character error rate, exact match."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grukit.tasks.seq2seq.metrics import edit_distance, seq2seq_metrics


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("2015-03-04", "2015-04-03", 2),  # two substitutions
        ("2015-03-04", "2015-03-4", 1),  # one deletion
        ("ab", "ba", 2),  # no transpositions in Levenshtein distance
    ],
)
def test_edit_distance(a, b, distance):
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_cer_divides_the_summed_distances_by_the_target_characters():
    metrics = seq2seq_metrics(["abcd", "xy", "hello"], ["abed", "x", "hello"])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["cer"] == pytest.approx((1 + 1 + 0) / (4 + 2 + 5))


def test_cer_can_exceed_one_for_outputs_longer_than_the_target():
    assert seq2seq_metrics(["ab"], ["abxyz"]) == {"exact_match": 0.0, "cer": 1.5}
    assert seq2seq_metrics(["ab", "c"], ["ab", "c"]) == {"exact_match": 1.0, "cer": 0.0}


@given(st.text("abc", max_size=8), st.text("abc", max_size=8), st.text("abc", max_size=8))
def test_edit_distance_is_a_metric(a, b, c):
    assert abs(len(a) - len(b)) <= edit_distance(a, b) <= max(len(a), len(b))
    assert (edit_distance(a, b) == 0) == (a == b)
    assert edit_distance(a, c) <= edit_distance(a, b) + edit_distance(b, c)
