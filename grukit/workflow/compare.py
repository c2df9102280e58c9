"""``compare``: which architecture fits this data? Train each of ``models`` (gru, mingru, lstm, transformer)
on the same data with the same settings (epochs, batch, seed, hidden, ...), each into its own run folder
PROJECT/TASK/compare/ARCH, then one table: parameters, training time, inference latency (median per batch on
the test inputs), the test metrics, and the task's baselines. compare.json and compare.csv hold the same.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grukit.backends import dispatch
from grukit.fileio import write_atomic, write_json
from grukit.tasks import get_task
from grukit.tasks.encoders import LABELS
from grukit.workflow.benchmark import inference_module, interleaved_medians

LATENCY_BUDGET_S = 0.5  # timing each model's latency stops after about this long (at least 5 calls)
# Keys each training run takes from the compare run's config (the others: model, name and mode are its own).
NOT_SHARED = ("task", "model", "models", "mode", "name", "resume")


def parameter_count(net: nn.Module) -> int:
    """Trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def latency_ms(net: nn.Module, inputs: dict[str, Any]) -> float:
    """Median milliseconds of one inference call of ``net`` (CPU, eval; a task's ``inference_module``) on
    ``inputs``."""
    net = net.eval().cpu()
    args = tuple(inputs.values())

    def run() -> None:
        with torch.no_grad():
            net(*args)

    medians, _ = interleaved_medians({"net": run}, budget_s=LATENCY_BUDGET_S)
    return medians["net"] * 1e3


def check_buildable(cfg: dict[str, Any]) -> None:
    """Build every architecture of cfg["models"] for the task on its data once, so that one the task does not
    support (or an option it lacks) is an error before any training starts."""
    task_cls = get_task(cfg["task"])
    task = task_cls.prepare(cfg)
    for arch in cfg["models"]:
        task_cls.build_network({**task.cfg, "model": arch}, task.meta())


def train_each(model_cls: type, cfg: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every architecture of cfg["models"] into ``folder``/ARCH with the shared settings of ``cfg``.
    Returns ({arch: trained grukit.Model}, {arch: its metrics.json content}). Each run's own printout goes to
    stderr (stdout gets the one table)."""
    shared = {k: v for k, v in cfg.items() if k not in NOT_SHARED}
    for name in [dispatch.forced()] if dispatch.forced() else dispatch.names():
        dispatch.load(name)  # a kernel built on first use must not count as the first GRU's training time
    trained, reports = {}, {}
    for i, arch in enumerate(cfg["models"], 1):
        if cfg["verbose"]:
            print(f"compare: training {arch} ({i}/{len(cfg['models'])}) into {folder / arch}", file=sys.stderr)
        model = model_cls(cfg["task"], **shared, model=arch, name=arch)
        model.run_parent = folder
        cpu = time.process_time()
        with contextlib.redirect_stdout(sys.stderr):
            reports[arch] = model.train()
        reports[arch]["cpu_seconds"] = time.process_time() - cpu  # robust to other processes on the machine
        trained[arch] = model
    return trained, reports


def summarise(trained: dict[str, Any], reports: dict[str, dict[str, Any]], task: Any) -> dict[str, Any]:
    """compare.json: per architecture its run folder, parameters, training time, latency (on ``task``'s example
    inputs) and test metrics; the baselines' test metrics (the same data for every run: taken from the first)."""
    first = next(iter(reports.values()))
    inputs = task.example_inputs()
    batch = next(iter(inputs.values()))
    models = {}
    for arch, model in trained.items():
        report = reports[arch]
        models[arch] = {
            "run": str(model.run_dir),
            "parameters": parameter_count(model.net),
            "train_seconds": report["train_seconds"],
            "cpu_seconds": report["cpu_seconds"],
            "epochs_run": report["epochs_run"],
            "best_epoch": report["best_epoch"],
            "latency_ms": latency_ms(inference_module(task, model.net), inputs),
            "test": report["test"]["model"],
        }
    return {
        "data": first["data"],
        "note": getattr(task, "compare_note", ""),
        "latency_batch": int(batch.shape[1] if batch.ndim == 3 else batch.shape[0]),
        "metrics": list(first["test"]["model"]),
        "models": models,
        "baselines": {name: m for name, m in first["test"].items() if name != "model"},
    }


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per architecture and baseline: model, parameters, train_seconds, cpu_seconds, latency_ms, then the
    metrics."""
    out = []
    for arch, m in summary["models"].items():
        row = {"model": arch, **{k: m[k] for k in ("parameters", "train_seconds", "cpu_seconds", "latency_ms")}}
        out.append({**row, **m["test"]})
    for name, metrics in summary["baselines"].items():
        blank = dict.fromkeys(("parameters", "train_seconds", "cpu_seconds", "latency_ms"), "")
        out.append({"model": name, **blank, **metrics})
    return out


# The columns before the metrics: (key, heading, width, format); baselines show "-" in them.
COLUMNS = (
    ("parameters", "params", 9, ","),
    ("train_seconds", "train s", 9, ".1f"),
    ("cpu_seconds", "cpu s", 8, ".1f"),
    ("latency_ms", "ms/batch", 10, ".3f"),
)


def table(summary: dict[str, Any], settings: str) -> str:
    """The printed comparison: one line per architecture, then the baselines."""
    metrics = {m: max(10, len(m) + 1) for m in summary["metrics"]}  # metric -> column width
    head = f"{'model':<16}" + "".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)
    lines = [
        f"compare on {summary['data']}: {settings}; latency per batch of {summary['latency_batch']}",
        *([summary["note"]] if summary.get("note") else []),
        head + "".join(f"{m:>{width}}" for m, width in metrics.items()),
    ]
    for row in rows(summary):
        label = LABELS.get(row["model"], row["model"].replace("_", " "))
        cells = "".join(
            f"{'-' if row[key] == '' else format(row[key], spec):>{width}}" for key, _, width, spec in COLUMNS
        )
        lines.append(f"{label:<16}{cells}" + "".join(f"{row[m]:>{width}.3f}" for m, width in metrics.items()))
    return "\n".join(lines)


def write_outputs(folder: Path, summary: dict[str, Any]) -> None:
    """compare.json and compare.csv in ``folder``, each written atomically."""
    write_json(folder / "compare.json", summary)
    text = io.StringIO()
    table_rows = rows(summary)
    writer = csv.DictWriter(text, fieldnames=list(table_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in table_rows)
    write_atomic(folder / "compare.csv", text.getvalue().encode())
