"""Tasks: what to learn from which data (forecast, classify, seq2seq), each with its data checks,
network, loss, metrics, baselines and export."""

from __future__ import annotations

from typing import Any

from grukit.errors import ConfigError

IMPLEMENTED = ("forecast", "classify", "seq2seq")


def get_task(name: str) -> Any:
    """The task class for ``name``; ConfigError for a task that is not implemented yet."""
    if name == "forecast":
        from grukit.tasks.forecast.task import ForecastTask

        return ForecastTask
    if name == "classify":
        from grukit.tasks.classify.task import ClassifyTask

        return ClassifyTask
    if name == "seq2seq":
        from grukit.tasks.seq2seq.task import Seq2SeqTask

        return Seq2SeqTask
    raise ConfigError(f"task {name!r} is not implemented yet; implemented: {', '.join(IMPLEMENTED)}")
