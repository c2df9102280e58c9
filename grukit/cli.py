"""The ``grukit`` command: ``grukit TASK MODE key=value ...``, plus ``grukit cfg | help | version | checks``.

A thin layer over ``grukit.Model``: the arguments are parsed and checked by ``grukit.workflow.config`` (the
one parser), then ``Model(task, **cfg).train()`` (or ``.val()``, ``.predict()``, ``.export()``, ``.benchmark()``,
``.compare()``) runs. Any user error (unknown command or key, a bad value, bad data) prints one line
``grukit: ...`` to stderr and exits with status 2, never a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from grukit import __version__
from grukit.backends import dispatch
from grukit.errors import ConfigError, GrukitError, did_you_mean
from grukit.tasks.encoders import ARCHITECTURES
from grukit.workflow.config import MODES, TASKS, defaults_text, parse_args

USAGE = """usage: grukit TASK MODE [key=value ...]
       grukit cfg | help | version | checks

tasks:  forecast, classify (numeric sequences, text, audio), seq2seq (string pairs, character level)
modes:  train     train on data=... (default: bundled elecdemand), write runs/TASK/NAME/ and print test metrics
        val       score a trained model (model=RUN_FOLDER or .safetensors; default: the latest run) on its test windows
        predict   forecast the horizon after the last value of source=... (default: the model's data);
                  classify: the class of every sequence of source=...; seq2seq: the output of every source
        export    write format=onnx|torchscript next to the checkpoint and check it on real inputs
        benchmark time a trained model (model=RUN) on each compute backend and onnxruntime, on its test inputs
        compare   train models=gru,mingru,lstm,transformer (the default) on the same data with the same settings
                  and print one table: parameters, training time, latency, test metrics and baselines
other:  cfg       print every key with its default (grukit/workflow/defaults.toml)
        version   print the grukit, torch and python versions
        checks    build the compute backends and print what this installation can use
        demo      the same as `grukit forecast train`

examples:
  grukit forecast train
  grukit forecast train data=my.csv target=load known=temp epochs=20 hidden=32
  grukit forecast train resume=True
  grukit forecast train devices=2          (or: torchrun --nproc-per-node 2 -m grukit forecast train)
  grukit forecast predict model=runs/forecast/train
  grukit forecast export model=runs/forecast/train format=onnx
  grukit forecast benchmark model=runs/forecast/train
  grukit forecast compare epochs=10 models=gru,lstm
  grukit forecast train model=lstm
  grukit classify train
  grukit classify predict model=runs/classify/train source=my_sequences.csv
  grukit seq2seq train                    (bundled dates: free-form dates to ISO 8601)
  grukit seq2seq predict model=runs/seq2seq/train source=my_sources.csv beam=4"""


def _latest_run(project: str, task: str) -> str:
    runs = sorted(Path(project, task).glob("*/weights/best.safetensors"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"no trained model in {Path(project, task)}; train one, or give model=PATH")
    print(f"using the latest trained model: {runs[-1].parent.parent}", file=sys.stderr)
    return str(runs[-1])


def run_task(task: str, mode: str, args: Sequence[str]) -> int:
    """``grukit TASK MODE key=value ...``: parse, check and call ``grukit.Model``."""
    from grukit.workflow.model import Model

    overrides = parse_args(args)
    for key, expected in (("task", task), ("mode", mode)):
        if key in overrides and overrides[key] != expected:
            raise ConfigError(f"{key}={overrides[key]} contradicts the command's {key} {expected!r}")
        overrides.pop(key, None)
    if mode == "train":
        Model(task, **overrides).train()
        return 0
    if mode == "compare":
        Model(task, **overrides).compare()
        return 0
    project = overrides.get("project", "runs")
    model = overrides.pop("model", None) or _latest_run(project, task)
    if model in ARCHITECTURES:
        raise ConfigError(f"{mode} needs a trained model: model=RUN_FOLDER or model=FILE.safetensors, not {model}")
    trained = Model(task, model=model, **overrides)
    if mode == "val":
        trained.val()
    elif mode == "predict":
        trained.predict()
    elif mode == "benchmark":
        trained.benchmark()
    else:
        trained.export(trained.cfg["format"])
    return 0


def _cfg(args: Sequence[str]) -> int:
    if args:
        raise ConfigError(f"cfg takes no arguments, got {' '.join(args)!r}")
    print(defaults_text(), end="")
    return 0


def _version(args: Sequence[str]) -> int:
    if args:
        raise ConfigError(f"version takes no arguments, got {' '.join(args)!r}")
    print(f"grukit {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    return 0


def _checks(args: Sequence[str]) -> int:
    if args:
        raise ConfigError(f"checks takes no arguments, got {' '.join(args)!r}")
    _version([])
    print(f"torch threads: {torch.get_num_threads()}; CUDA: {torch.cuda.is_available()}")
    for package in ("safetensors", "matplotlib", "onnx", "onnxruntime"):
        found = importlib.util.find_spec(package) is not None
        print(f"{package}: {'installed' if found else 'missing'}")
    for name in dispatch.names():  # loading builds (or finds cached) kernels: the first time takes about a minute
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend = dispatch.load(name)
        seconds = time.perf_counter() - started
        if backend is not None and not getattr(backend, "wanted", lambda: True)():
            print(f"backend {name}: loaded, but nothing here for it to run on (it needs a CUDA device)")
        elif backend is not None:
            print(f"backend {name}: ready ({seconds:.1f} s)")
        else:
            reason = str(caught[0].message) if caught else "unavailable"
            print(f"backend {name}: not available here: {reason}")
    return 0


def _help(args: Sequence[str]) -> int:
    print(USAGE)
    return 0


COMMANDS = {"cfg": _cfg, "version": _version, "checks": _checks, "help": _help}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grukit command line. argv: the arguments after the program name (default: sys.argv[1:]).

    Returns the exit status: 0 on success, 2 on a usage or data error (one line on stderr), 130 when
    interrupted (a training run can then be resumed).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command in ("-h", "--help"):
        command = "help"
    try:
        if not command:
            raise ConfigError("no command given; try 'grukit help'")
        if command == "demo":
            return run_task("forecast", "train", rest)
        if command in TASKS:
            if not rest or "=" in rest[0]:
                raise ConfigError(
                    f"{command}: give a mode first, one of {', '.join(MODES)}; e.g. grukit {command} train"
                )
            if rest[0] not in MODES:
                raise ConfigError(f"unknown mode {rest[0]!r}{did_you_mean(rest[0], MODES)}; modes: {', '.join(MODES)}")
            return run_task(command, rest[0], rest[1:])
        if command not in COMMANDS:
            choices = [*TASKS, *COMMANDS, "demo"]
            raise ConfigError(
                f"unknown command {command!r}{did_you_mean(command, choices)}; commands: {', '.join(choices)}"
            )
        return COMMANDS[command](rest)
    except GrukitError as err:
        print(f"grukit: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grukit: interrupted; continue a training run with 'grukit TASK train resume=True'", file=sys.stderr)
        return 130
