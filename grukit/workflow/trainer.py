"""The training loop shared by every task: Adam, a cosine (or constant) learning rate per step, gradient
clipping, early stopping on a validation metric, seeded shuffling and dropout, and after every epoch an
atomic ``last`` checkpoint (and ``best`` when the validation score improved) plus the per-epoch CSV.

Each epoch's shuffle and dropout are seeded from (seed, epoch), so a run resumed from ``last`` after an
interruption continues exactly as the uninterrupted run would have.

A task provides: ``train_batches(rng, batch)``, ``steps_per_epoch(batch)``, ``loss(net, batch, device)``,
``evaluate(net, "val", device) -> {metric: value}``, ``monitor`` (a metric, lower is better) and ``meta()``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from grukit.fileio import write_atomic
from grukit.workflow.checkpoints import load_optimizer_tensors, optimizer_tensors, save_checkpoint
from grukit.workflow.progress import Progress


def learning_rate(cfg: dict[str, Any], step: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` of ``total``: cosine from lr to 0, or constant."""
    if cfg["lr_schedule"] == "constant":
        return cfg["lr"]
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """The per-epoch metrics as CSV, rewritten atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in history)
    write_atomic(path, text.getvalue().encode())


def fit(
    task: Any,
    net: nn.Module,
    cfg: dict[str, Any],
    run_dir: Path,
    device: torch.device,
    resume: tuple[dict, dict] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``net`` on ``task`` in ``run_dir`` and return the final training state (epoch, best_epoch, history).

    resume: (optimiser tensors, checkpoint meta) of a ``last`` checkpoint whose weights are already in ``net``.
    on_epoch_end(epoch) runs after each epoch's checkpoints are written (tests interrupt a run with it).
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    if resume is not None:
        optim_tensors, meta = resume
        load_optimizer_tensors(optimizer, optim_tensors)
        state.update({k: meta[k] for k in state})
    steps = task.steps_per_epoch(cfg["batch"])
    total = cfg["epochs"] * steps
    weights = run_dir / "weights"
    metric = f"val_{task.monitor}"
    while state["epoch"] < cfg["epochs"]:
        if cfg["patience"] and state["bad_epochs"] >= cfg["patience"]:
            break
        epoch = state["epoch"] + 1
        rng = np.random.default_rng([cfg["seed"], epoch])
        torch.manual_seed(cfg["seed"] * 100_003 + epoch)
        progress = Progress(steps, f"epoch {epoch}/{cfg['epochs']}", cfg["verbose"])
        net.train()
        start, loss_sum = time.perf_counter(), 0.0
        for i, batch in enumerate(task.train_batches(rng, cfg["batch"])):
            lr = learning_rate(cfg, state["step"], total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = task.loss(net, batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["clip"] > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg["clip"])
            optimizer.step()
            state["step"] += 1
            loss_sum += loss.item()
            progress.update(i + 1, loss_sum / (i + 1))
        val = task.evaluate(net, "val", device)
        row = {"epoch": epoch, "train_loss": loss_sum / steps, **{f"val_{k}": v for k, v in val.items()}}
        row.update(lr=lr, seconds=time.perf_counter() - start)
        state["history"].append(row)
        state["epoch"] = epoch
        improved = row[metric] < state["best"]
        if improved:
            state.update(best=row[metric], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        meta = {"task": cfg["task"], "config": cfg, "task_meta": task.meta(), **state}
        model_tensors = net.state_dict()
        save_checkpoint(weights / "last.safetensors", model_tensors, optimizer_tensors(optimizer), meta)
        if improved:
            save_checkpoint(weights / "best.safetensors", model_tensors, {}, meta)
        write_history(run_dir / "results.csv", state["history"])
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds"))
        progress.line(f"epoch {epoch}/{cfg['epochs']}  {shown}  {row['seconds']:.1f}s" + ("  *" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return state
