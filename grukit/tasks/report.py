"""The printed metrics table every task's ``table()`` shows: a header and one row per model or baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def metric_lines(
    rows: Sequence[tuple[str, Mapping[str, float]]],
    metrics: Sequence[str],
    titles: Sequence[str] | None = None,
    name_width: int = 16,
    width: int = 10,
    digits: int = 3,
) -> list[str]:
    """The header line (``titles``, default the metric names) and one line per (name, {metric: value}) row."""
    head = f"{'model':<{name_width}}" + "".join(f"{title:>{width}}" for title in titles or metrics)
    return [
        head,
        *(f"{name:<{name_width}}" + "".join(f"{m[k]:>{width}.{digits}f}" for k in metrics) for name, m in rows),
    ]
