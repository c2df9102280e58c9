"""Seq2seq metrics, the same for the model and the baselines: exact match (share of outputs equal to the target)
and character error rate (CER: the Levenshtein distance between output and target summed over the pairs,
divided by the total number of target characters, as speech recognition's CER / jiwer's ``cer``)."""

from __future__ import annotations

METRICS = ("exact_match", "cer")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def seq2seq_metrics(targets: list[str], predicted: list[str]) -> dict[str, float]:
    """Exact match and CER of ``predicted`` against ``targets`` (same length, N >= 1)."""
    exact = sum(p == t for p, t in zip(predicted, targets, strict=True))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, targets, strict=True))
    return {"exact_match": exact / len(targets), "cer": errors / max(sum(len(t) for t in targets), 1)}
