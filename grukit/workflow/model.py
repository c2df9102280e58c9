"""``grukit.Model``: one object to train, validate, predict with and export a GRU model for a task.

    model = grukit.Model("forecast", epochs=5)
    metrics = model.train(data="elecdemand")      # runs/forecast/train/: config, metrics, checkpoints, plots
    model.val()                                   # test metrics again (or on other data: data=...)
    forecast = model.predict()                    # the horizon after the data's last value
    model.export(format="onnx")                   # next to the checkpoint, checked with onnxruntime
    model.benchmark()                             # inference time on each backend and onnxruntime
    model = grukit.Model.load("runs/forecast/train")
    grukit.Model("forecast", epochs=5).compare()  # gru, mingru, lstm, transformer: one table

The command line ``grukit TASK MODE key=value ...`` calls exactly these methods.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from grukit.data.bundled import names as bundled_names
from grukit.errors import ConfigError, GrukitError
from grukit.fileio import write_atomic, write_json
from grukit.tasks import get_task
from grukit.workflow import benchmark as benchmarking
from grukit.workflow import compare as comparison
from grukit.workflow import distributed
from grukit.workflow.checkpoints import load_checkpoint, save_checkpoint
from grukit.workflow.config import checkpoint_like, resolve
from grukit.workflow.export import batch_size
from grukit.workflow.runs import find_resume_dir, new_folder, new_run_dir
from grukit.workflow.trainer import fit

# Keys a resumed run may change; every other key is the run's own.
RESUMABLE = (
    "epochs", "patience", "verbose", "plots", "threads", "device", "devices", "max_nonfinite", "resume", "name",
    "project", "mode",
)  # fmt: skip
# Keys given with model=CHECKPOINT that apply to the loaded model (the others are the checkpoint's).
REAPPLIED = (
    *RESUMABLE, "data", "source", "format", "test_windows", "val_windows", "backtest", "seed", "lr", "batch", "beam"
)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run with ``threads`` torch threads (0: OMP_NUM_THREADS when set, else 1), restored afterwards."""
    count = threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str) -> torch.device:
    """torch.device for the config value (auto: cuda when available); ConfigError when cuda is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but torch sees no CUDA device; use device=cpu")
    return torch.device(name)


def _absolute_data(data: str) -> str:
    """A CSV path as an absolute path (so the run works from any folder later); bundled names unchanged."""
    if data in ("auto", *bundled_names()) or not Path(data).expanduser().exists():
        return data
    return str(Path(data).expanduser().resolve())


def _say(cfg: dict[str, Any], text: str, main: bool = True) -> None:
    if cfg["verbose"] and main:
        print(text, file=sys.stderr, flush=True)


class Model:
    """A task's model: ``Model(task, **cfg)`` for a new one (keys of ``grukit cfg``), ``Model.load(path)`` for
    a trained one. ``cfg`` is the configuration; after ``train`` or ``load`` it is fully resolved."""

    def __init__(self, task: str = "forecast", **cfg: Any) -> None:
        self.cfg = resolve({"task": task, **cfg})
        self.given = dict(cfg)  # the keys the user set, which a resumed run compares with its own
        get_task(self.cfg["task"])  # raises for a task that is not implemented yet
        self.net: torch.nn.Module | None = None
        self.meta: dict[str, Any] | None = None
        self.checkpoint: Path | None = None
        self.run_dir: Path | None = None  # the training run (train, resume)
        self.output_dir: Path | None = None  # the folder the last train, val or predict wrote
        self.run_parent: Path | None = None  # where train puts its run folder (None: PROJECT/TASK; compare sets it)
        model = self.cfg["model"]
        if checkpoint_like(model):
            self._load(model)
            self.cfg = resolve({k: v for k, v in cfg.items() if k in REAPPLIED}, base=self.cfg)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """A trained model from a checkpoint: a .safetensors file or a run folder (its weights/best)."""
        model = cls.__new__(cls)
        model.run_dir, model.output_dir, model.run_parent, model.given = None, None, None, {}
        model._load(path)
        return model

    def _load(self, path: str | os.PathLike[str]) -> None:
        tensors, _, meta = load_checkpoint(path)
        self.cfg = resolve({}, base=meta["config"])
        self.meta = meta["task_meta"]
        self.net = get_task(self.cfg["task"]).build_network(self.cfg, self.meta)
        self.net.load_state_dict(tensors)
        self.net.eval()
        path = Path(path)
        self.checkpoint = path / "weights" / "best.safetensors" if path.is_dir() else path

    def _require_trained(self, mode: str) -> None:
        if self.net is None:
            raise ConfigError(
                f"{mode} needs a trained model: train first, or give model=PATH (a run folder or .safetensors)"
            )

    # ------------------------------------------------------------ train

    def train(self, data: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Train on ``data`` (default: the config's), write a run folder and return its metrics.json content.

        With ``resume=True`` continues the run ``name`` (auto: the latest) from its ``last`` checkpoint. With
        ``devices=N`` trains in N DistributedDataParallel worker processes (``grukit.workflow.distributed``; from
        a script, call it under ``if __name__ == "__main__":``); under torchrun this process is one worker.
        """
        if data is not None:
            overrides["data"] = data
        cfg = resolve({**overrides, "mode": "train"}, base=self.cfg)
        given = {**self.given, **overrides}
        cfg["data"] = _absolute_data(cfg["data"])
        if cfg["devices"] > 1 and not distributed.launched():
            return self._train_in_workers(cfg, overrides)
        task_cls = get_task(cfg["task"])
        start = time.perf_counter()
        with torch_threads(cfg["threads"]) as threads, distributed.join(resolve_device(cfg["device"])) as group:
            device = group.device
            # a worker torchrun restarted after a failure continues its job's run folder (from `last` if any)
            job_dir = group.from_main(lambda: distributed.job_run(cfg["project"], cfg["task"]))
            if cfg["resume"] or (job_dir and (job_dir / "weights" / "last.safetensors").is_file()):
                run_dir = job_dir or group.from_main(lambda: find_resume_dir(cfg["project"], cfg["task"], cfg["name"]))
                tensors, optim, meta = load_checkpoint(run_dir / "weights" / "last.safetensors")
                saved = resolve({}, base=meta["config"])
                changed = [] if job_dir else [k for k in given if k not in RESUMABLE and cfg[k] != saved[k]]
                if changed:
                    key = changed[0]
                    raise ConfigError(
                        f"resume continues {run_dir} with its own settings; {key}={given[key]!r} differs from "
                        f"its {saved[key]!r}: drop it, or train a new run without resume"
                    )
                cfg = resolve({k: cfg[k] for k in RESUMABLE if k in given or k == "resume"}, base=saved)
                task = task_cls.prepare(cfg, meta["task_meta"])
                net = task_cls.build_network(task.cfg, meta["task_meta"])
                net.load_state_dict(tensors)
                resume = (optim, meta)
                _say(cfg, f"resuming {run_dir} after epoch {meta['epoch']} of {cfg['epochs']}", group.main)
            else:
                task = task_cls.prepare(cfg, self.meta)
                torch.manual_seed(cfg["seed"])
                net = task_cls.build_network(task.cfg, task.meta())
                if self.net is not None:  # fine-tune a loaded model
                    net.load_state_dict(self.net.state_dict())
                parent = self.run_parent or Path(cfg["project"]) / cfg["task"]
                name = cfg["mode"] if cfg["name"] == "auto" else cfg["name"]
                run_dir = job_dir or group.from_main(lambda: new_folder(parent, name))
                resume = None
            cfg = task.cfg
            if group.main:
                write_json(run_dir / "config.json", cfg)
                distributed.mark_job(run_dir)
            plural = "s" * (threads != 1)
            workers = f"{threads} thread{plural}" + (f" x {group.world} workers" if group.world > 1 else "")
            _say(cfg, f"grukit {cfg['task']} train: {task.describe()}; {workers}; run folder {run_dir}", group.main)
            net.to(device)
            state = fit(task, net, cfg, run_dir, device, resume, getattr(self, "_on_epoch_end", None), group)
            if not group.main:  # rank 0 scores the model and writes the rest of the run folder
                self.run_dir = run_dir
                return {}
            best_path = run_dir / "weights" / "best.safetensors"
            best, _, meta = load_checkpoint(best_path)
            net.load_state_dict(best)
            if hasattr(task, "calibrate"):
                meta["calibration"] = task.calibrate(net, device)
                save_checkpoint(best_path, net.state_dict(), {}, meta)
            report = task.report(net, device)
        report.update(
            best_epoch=state["best_epoch"],
            epochs_run=state["epoch"],
            skipped_steps=state["skipped"],
            train_seconds=sum(row["seconds"] for row in state["history"]),
            wall_seconds=time.perf_counter() - start,
        )
        write_json(run_dir / "metrics.json", report)
        self.cfg, self.meta, self.net = cfg, meta["task_meta"], net.cpu().eval()
        self.run_dir = self.output_dir = run_dir
        self.checkpoint = run_dir / "weights" / "best.safetensors"
        if cfg["plots"]:
            self._plots(task, run_dir, state["history"])
        if cfg["verbose"]:
            print(task.table(report))
            print(
                f"best epoch {state['best_epoch']} of {state['epoch']}; trained in {report['train_seconds']:.1f} s, "
                f"whole run {report['wall_seconds']:.1f} s on {threads} torch thread{'s' * (threads != 1)}; "
                f"results in {run_dir}/"
            )
        return report

    def _train_in_workers(self, cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """``train(**overrides)`` in cfg["devices"] DDP worker processes; this Model then holds rank 0's result."""
        if not cfg["resume"] and not cfg["stream"]:  # bad data fails here, in seconds, not after starting the workers
            get_task(cfg["task"]).prepare(cfg, self.meta)
        checkpoint = str(self.checkpoint) if self.net is not None and self.checkpoint else None
        parent = str(self.run_parent) if self.run_parent else None
        args = (self.cfg["task"], self.given, overrides, checkpoint, parent)
        report, run_dir = distributed.spawn(_train_worker, args, cfg["devices"])
        self._load(run_dir)
        self.run_dir = self.output_dir = Path(run_dir)
        return report

    def _plots(self, task: Any, run_dir: Path, history: list[dict[str, float]]) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            _say(self.cfg, "plots skipped: matplotlib is not installed (pip install matplotlib)")
            return
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        epochs = [row["epoch"] for row in history]
        left.plot(epochs, [row["train_loss"] for row in history], marker="o")
        left.set(title=f"training loss ({task.loss_name})", xlabel="epoch")
        right.plot(epochs, [row[f"val_{task.monitor}"] for row in history], marker="o", color="tab:orange")
        right.set(title=f"validation {task.monitor.replace('_', ' ')}", xlabel="epoch")
        fig.tight_layout()
        fig.savefig(run_dir / "curves.png", dpi=100)
        plt.close(fig)
        task.plot(self.net, torch.device("cpu"), run_dir)

    # ------------------------------------------------------------ val, predict, export

    def _task(self, cfg: dict[str, Any]) -> Any:
        return get_task(cfg["task"]).prepare(cfg, self.meta)

    def val(self, data: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Test metrics (and baselines) of the trained model on its data, or on ``data`` with the same columns.
        Writes PROJECT/TASK/val/metrics.json (a new folder each time)."""
        self._require_trained("val")
        if data is not None:
            overrides["data"] = data
        cfg = resolve({**overrides, "mode": "val"}, base=self.cfg)
        with torch_threads(cfg["threads"]):
            task = self._task(cfg)
            report = task.report(self.net, torch.device("cpu"))
        run_dir = new_run_dir(cfg["project"], cfg["task"], "val" if cfg["name"] == "auto" else cfg["name"])
        write_json(run_dir / "metrics.json", report)
        if cfg["verbose"]:
            print(task.table(report))
            print(f"results in {run_dir}/")
        self.output_dir = run_dir
        return report

    def predict(self, source: str | None = None, **overrides: Any) -> Any:
        """Forecast the horizon after the last observed value of ``source`` (a CSV with the model's columns or a
        bundled dataset; default: the model's data). Writes predictions.csv in PROJECT/TASK/predict."""
        self._require_trained("predict")
        cfg = resolve({**overrides, "mode": "predict"}, base=self.cfg)
        source = source if source is not None else cfg["source"]
        if source != "auto":
            cfg["data"] = _absolute_data(source)
        with torch_threads(cfg["threads"]):
            task = self._task(cfg)
            forecast = task.predict(self.net, torch.device("cpu"))
        run_dir = new_run_dir(cfg["project"], cfg["task"], "predict" if cfg["name"] == "auto" else cfg["name"])
        rows = forecast.rows()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(run_dir / "predictions.csv", text.getvalue().encode())
        if cfg["verbose"]:
            if forecast.note:
                print(f"note: {forecast.note}", file=sys.stderr)
            print(text.getvalue(), end="")
            print(f"predictions in {run_dir}/predictions.csv", file=sys.stderr)
        self.output_dir = run_dir
        return forecast

    def export(self, format: str = "onnx", path: str | os.PathLike[str] | None = None, **overrides: Any) -> Path:
        """Write the network as ONNX or TorchScript (next to the checkpoint unless ``path``), check it against
        PyTorch on real inputs and print the max difference. Returns the file's path."""
        self._require_trained("export")
        cfg = resolve({**overrides, "format": format, "mode": "export"}, base=self.cfg)
        suffix = ".onnx" if cfg["format"] == "onnx" else ".torchscript.pt"
        if path is None:
            folder = self.checkpoint.parent if self.checkpoint else Path.cwd()
            path = folder / ((self.checkpoint.stem if self.checkpoint else "model") + suffix)
        path = Path(path)
        if not path.parent.is_dir():
            raise GrukitError(f"export: folder {str(path.parent)!r} does not exist")
        with torch_threads(cfg["threads"]):
            task = self._task(cfg)
            inputs = task.example_inputs()
            path, diff = task.export(self.net, inputs, path, cfg["format"])
        if cfg["verbose"]:
            runtime = "onnxruntime" if cfg["format"] == "onnx" else "TorchScript"
            print(
                f"exported {path}; {runtime} vs PyTorch on {batch_size(inputs)} real {task.example_name}: "
                f"max abs diff {diff:.2e}"
            )
        return path

    # ------------------------------------------------------------ compare, benchmark

    def compare(self, data: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Train each architecture of ``models`` (default: gru, mingru, lstm, transformer) on the same data with
        the same settings, each into PROJECT/TASK/compare/ARCH; print one table (parameters, training time,
        inference latency, test metrics, baselines); write compare.json and compare.csv there and return the
        compare.json content."""
        if data is not None:
            overrides["data"] = data
        given = {**self.given, **overrides}
        if self.net is not None or "model" in given:
            raise ConfigError("compare trains each architecture from scratch: drop model=, choose with models=gru,lstm")
        if given.get("resume"):
            raise ConfigError("compare trains new runs: drop resume= (resume one of its runs with train resume=True)")
        cfg = resolve({**overrides, "mode": "compare"}, base=self.cfg)
        cfg["data"] = _absolute_data(cfg["data"])
        comparison.check_buildable(cfg)  # every architecture, before any training or folder
        name = "compare" if cfg["name"] == "auto" else cfg["name"]
        folder = new_folder(Path(cfg["project"]) / cfg["task"], name, weights=False)
        trained, reports = comparison.train_each(type(self), cfg, folder)
        first = next(iter(trained.values()))
        with torch_threads(cfg["threads"]):
            task = first._task(resolve({"mode": "val"}, base=first.cfg))
            summary = comparison.summarise(trained, reports, task)
        settings = ", ".join(f"{k} {cfg[k]}" for k in ("epochs", "batch", "hidden", "layers", "lr", "seed"))
        summary = {"task": cfg["task"], "folder": str(folder), "settings": settings, **summary, "config": cfg}
        comparison.write_outputs(folder, summary)
        if cfg["verbose"]:
            print(comparison.table(summary, settings))
            print(f"runs, compare.json and compare.csv in {folder}/")
        self.output_dir = folder
        return summary

    def benchmark(self, **overrides: Any) -> list[dict[str, Any]]:
        """Time the trained model's inference on the task's test inputs on each grukit backend (on ``device``:
        auto is CUDA when there is one) and on onnxruntime (interleaved calls, medians); print a table; write
        PROJECT/TASK/benchmark/benchmark.json and return its "results"."""
        self._require_trained("benchmark")
        cfg = resolve({**overrides, "mode": "benchmark"}, base=self.cfg)
        with torch_threads(cfg["threads"]) as threads:
            device = resolve_device(cfg["device"])
            task = self._task(resolve({"mode": "val"}, base=cfg))  # val: the test split, as in training
            results, rounds = benchmarking.benchmark(task, self.net, threads, device)
        batch = batch_size(task.example_inputs())
        given_name = {**self.given, **overrides}.get("name", "auto")  # not the trained run's own name
        name = "benchmark" if given_name == "auto" else given_name
        run_dir = new_folder(Path(cfg["project"]) / cfg["task"], name, weights=False)
        report = {
            "model": str(self.checkpoint) if self.checkpoint else None,
            "architecture": cfg["model"],
            "device": str(device),
            "batch": batch,
            "threads": threads,
            "rounds": rounds,
            "results": benchmarking.as_json(results),
        }
        write_json(run_dir / "benchmark.json", report)
        if cfg["verbose"]:
            print(benchmarking.table(results, batch, task.example_name, device))
            print(f"{threads} torch thread{'s' * (threads != 1)}, {rounds} rounds; results in {run_dir}/benchmark.json")
        self.output_dir = run_dir
        return report["results"]


def _train_worker(
    task: str, given: dict[str, Any], overrides: dict[str, Any], checkpoint: str | None, parent: str | None
) -> tuple[dict[str, Any], str]:
    """One worker of ``Model.train(devices=N)``: the same Model (fine-tuning ``checkpoint`` when given, with
    the user's keys; runs under ``parent`` when compare set one) trained in this process's place in the group;
    (report, run folder) on rank 0."""
    model = Model(task, **{**given, "model": checkpoint}) if checkpoint else Model(task, **given)
    model.run_parent = Path(parent) if parent else None
    report = model.train(**overrides)
    return report, str(model.run_dir)
