"""Classification metrics, the same for the model and the majority-class baseline.

All take integer class indices: actual (N,) and predicted (N,). Macro-F1 averages the per-class F1 over the
classes that occur in actual or predicted (as scikit-learn's ``f1_score(average="macro")``); a class with no
true and no predicted positives does not count, one with either but no correct ones scores 0.
"""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "macro_f1")


def confusion(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = actual class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (actual, predicted), 1)
    return out


def classification_metrics(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of ``predicted`` against ``actual``."""
    matrix = confusion(actual, predicted, n_classes)
    correct = np.diag(matrix).astype(np.float64)
    true_count, predicted_count = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (true_count + predicted_count) > 0
    f1 = 2 * correct[present] / (true_count[present] + predicted_count[present])
    return {"accuracy": float(correct.sum() / max(len(actual), 1)), "macro_f1": float(f1.mean())}
