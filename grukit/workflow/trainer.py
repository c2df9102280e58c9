"""The training loop shared by every task: Adam, a cosine (or constant) learning rate per step, gradient
clipping, early stopping on a validation metric, seeded shuffling and dropout, skipping of non-finite steps,
and after every epoch an atomic ``last`` checkpoint (and ``best`` when the validation score improved) plus the
per-epoch CSV. One loop for one process and for DistributedDataParallel workers (``grukit.workflow.distributed``).

Each epoch's shuffle and dropout are seeded from (seed, epoch), so a run resumed from ``last`` after an
interruption (even ``kill -9``, which loses at most the unfinished epoch) ends with the same weights as the
uninterrupted run.

A task provides: ``train_batches(rng, batch)``, ``steps_per_epoch(batch)``, ``loss(net, batch, device)``,
``evaluate(net, "val", device) -> {metric: value}``, ``monitor`` (a metric, lower is better) and ``meta()``;
for ``devices>1``, batches that are dicts of tensors and, where a tensor's batch axis is not the second of a
3-d tensor or the first of any other, ``batch_axes = {name: axis}``. Workers take the same steps as one
process when the loss is a mean over the batch's samples (forecast, classify).
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

from grukit.errors import GrukitError
from grukit.fileio import remove_stale_temporaries, write_atomic
from grukit.workflow.checkpoints import load_optimizer_tensors, optimizer_tensors, save_checkpoint
from grukit.workflow.distributed import Group
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


def _stop_message(cfg: dict[str, Any], epoch: int, streak: int, weights: Path, done: int) -> str:
    kept = (
        f"the last good checkpoint {weights / 'last.safetensors'} (epoch {done}) is intact"
        if done
        else "no epoch had finished, so no checkpoint was written"
    )
    return (
        f"training stopped in epoch {epoch}: {streak} steps in a row had a non-finite loss or gradient "
        f"(max_nonfinite={cfg['max_nonfinite']}); {kept}; lower lr=, set clip=, or check the data for extreme values"
    )


def fit(
    task: Any,
    net: nn.Module,
    cfg: dict[str, Any],
    run_dir: Path,
    device: torch.device,
    resume: tuple[dict, dict] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    group: Group | None = None,
) -> dict[str, Any]:
    """Train ``net`` on ``task`` in ``run_dir`` and return the final training state (epoch, best_epoch, history).

    resume: (optimiser tensors, checkpoint meta) of a ``last`` checkpoint whose weights are already in ``net``.
    on_epoch_end(epoch) runs after each epoch's checkpoints are written (tests interrupt a run with it).
    group: the workers of a distributed run (default: this process alone). Each rank trains on its shard of every
    global batch of ``cfg["batch"]`` windows; rank 0 alone validates (its result shared), writes and prints.

    A step whose loss or gradient is not finite (on any rank) is skipped and counted ("skipped" per epoch and in
    the state); ``cfg["max_nonfinite"]`` such steps in a row (0: no limit) stop the run with a GrukitError,
    leaving the checkpoints of the last finished epoch as they were.
    """
    group = group or Group(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    state: dict[str, Any] = {
        "epoch": 0, "step": 0, "best": math.inf, "best_epoch": 0, "bad_epochs": 0, "skipped": 0, "history": [],
    }  # fmt: skip
    if resume is not None:
        optim_tensors, meta = resume
        load_optimizer_tensors(optimizer, optim_tensors)
        state.update({k: meta[k] for k in state})
    steps = task.steps_per_epoch(cfg["batch"])
    total = cfg["epochs"] * steps
    weights = run_dir / "weights"
    if group.main:  # a run killed mid-write left these (checkpoints in weights/, results.csv, config.json)
        remove_stale_temporaries(weights)
        remove_stale_temporaries(run_dir)
    metric = f"val_{task.monitor}"
    model = group.wrap(net)
    verbose = cfg["verbose"] and group.main
    streak = 0  # non-finite steps in a row
    while state["epoch"] < cfg["epochs"]:
        if cfg["patience"] and state["bad_epochs"] >= cfg["patience"]:
            break
        epoch = state["epoch"] + 1
        rng = np.random.default_rng([cfg["seed"], epoch])
        torch.manual_seed(cfg["seed"] * 100_003 + epoch)
        progress = Progress(steps, f"epoch {epoch}/{cfg['epochs']}", verbose)
        model.train()
        start, loss_sum, skipped = time.perf_counter(), 0.0, 0
        for i, batch in enumerate(task.train_batches(rng, cfg["batch"])):
            lr = learning_rate(cfg, state["step"], total)
            for group_settings in optimizer.param_groups:
                group_settings["lr"] = lr
            part, weight = group.shard(batch, getattr(task, "batch_axes", None))
            loss = task.loss(model, part, device) * weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
            value = loss.item()
            loss_total, bad = group.sum([value, float(not (math.isfinite(value) and torch.isfinite(norm)))])
            state["step"] += 1
            if bad:
                skipped, streak = skipped + 1, streak + 1
                if cfg["max_nonfinite"] and streak >= cfg["max_nonfinite"]:
                    raise GrukitError(_stop_message(cfg, epoch, streak, weights, state["epoch"]))
                continue
            streak = 0
            if cfg["clip"] > 0:
                nn.utils.clip_grads_with_norm_(net.parameters(), cfg["clip"], norm)
            optimizer.step()
            loss_sum += loss_total / group.world
            progress.update(i + 1, loss_sum / (i + 1 - skipped))
        val = group.from_main(lambda: task.evaluate(net, "val", device))
        row = {"epoch": epoch, "train_loss": loss_sum / max(steps - skipped, 1)}
        row.update({f"val_{k}": v for k, v in val.items()}, lr=lr, skipped=skipped, seconds=time.perf_counter() - start)
        state["history"].append(row)
        state["epoch"] = epoch
        state["skipped"] += skipped
        score = row[metric]
        improved = score < state["best"] or not state["best_epoch"]  # the first epoch gives `best` even if NaN
        if improved:
            state.update(best=score if math.isfinite(score) else math.inf, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        if group.main:  # best, then the history, then last: a kill between them leaves last one epoch behind
            meta = {"task": cfg["task"], "config": cfg, "task_meta": task.meta(), **state}
            model_tensors = net.state_dict()
            if improved:
                save_checkpoint(weights / "best.safetensors", model_tensors, {}, meta)
            write_history(run_dir / "results.csv", state["history"])
            save_checkpoint(weights / "last.safetensors", model_tensors, optimizer_tensors(optimizer), meta)
        hidden = ("epoch", "seconds", "skipped")
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in hidden)
        if skipped:
            shown += f"  skipped {skipped} non-finite step{'s' * (skipped != 1)}"
        progress.line(f"epoch {epoch}/{cfg['epochs']}  {shown}  {row['seconds']:.1f}s" + ("  *" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return state
