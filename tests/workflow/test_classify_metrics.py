"""Accuracy and macro-F1 on a tiny example computed by hand, and the majority baseline's."""

from __future__ import annotations

import numpy as np
import pytest

from grukit.tasks.classify.metrics import classification_metrics, confusion


def test_metrics_by_hand():
    actual = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp 2, fn 1, fp 0 -> F1 4/5; class 1: tp 1, fn 1, fp 1 -> 1/2; class 2: tp 1, fp 1 -> 2/3
    got = classification_metrics(actual, predicted, 3)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert confusion(actual, predicted, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_majority_baseline_by_hand():
    actual = np.array([0, 0, 0, 1, 1, 2])
    got = classification_metrics(actual, np.zeros(6, dtype=int), 4)  # class 3 never occurs: not averaged
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx((2 * 3 / (3 + 6)) / 3)
