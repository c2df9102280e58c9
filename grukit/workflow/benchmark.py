"""``benchmark``: time a trained network's inference on the task's real test inputs, on each grukit backend
(forced one at a time, as ``GRUKIT_BACKEND`` would; on the config's device: CUDA when there is one) and on
onnxruntime (the task's ONNX export in a temporary file, on the CPU), in one process. Calls are interleaved
(every runner once per round), so that machine noise hits all runners alike; each runner's median over the
rounds is reported, with its speed relative to the first runner (the reference backend, or plain PyTorch for a
model without a grukit recurrence) and the largest difference of its outputs from that runner's.

What is timed is the network called on ``task.example_inputs()``, or, for a task whose network needs more than
those inputs (seq2seq: decoder inputs), the module ``task.inference_module(net)`` (the computation its export
holds: seq2seq's greedy decoder).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grukit.backends import dispatch
from grukit.errors import GrukitError
from grukit.nn import GRU, MinGRU

BUDGET_S = 2.0  # timed rounds stop after about this long (at least MIN_ROUNDS, at most MAX_ROUNDS)
MIN_ROUNDS, MAX_ROUNDS, WARMUP = 5, 200, 2


@dataclass
class Result:
    """One row of the benchmark: a runner that served the model (median_ms set) or why it could not."""

    name: str
    median_ms: float | None = None
    speedup: float | None = None  # first runner's median / this median
    max_abs_diff: float | None = None  # outputs against the first runner's (onnxruntime: against PyTorch)
    reason: str = ""


def interleaved_medians(
    runners: dict[str, Callable[[], Any]], budget_s: float = BUDGET_S
) -> tuple[dict[str, float], int]:
    """({name: median seconds per call}, rounds): WARMUP calls of each runner, then rounds of one call of
    each until ``budget_s`` seconds have passed (MIN_ROUNDS..MAX_ROUNDS rounds)."""
    for run in runners.values():
        for _ in range(WARMUP):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    start, rounds = time.perf_counter(), 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < budget_s):
        for name, run in runners.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}, rounds


def uses_grukit_recurrence(net: nn.Module) -> bool:
    """Whether ``net`` holds a grukit GRU or MinGRU, whose recurrence a grukit backend computes."""
    return any(isinstance(module, GRU | MinGRU) for module in net.modules())


def inference_module(task: Any, net: nn.Module) -> nn.Module:
    """The module timed on ``task.example_inputs()``: ``task.inference_module(net)`` where the task has one, else
    ``net``."""
    hook = getattr(task, "inference_module", None)
    return net if hook is None else hook(net)


def _torch_runner(net: nn.Module, args: tuple[Tensor, ...], backend: str | None) -> Callable[[], Tensor]:
    """One inference call of ``net`` with ``backend`` forced (None: none), finished when it returns (CUDA too)."""

    def run() -> Tensor:
        with dispatch.force(backend), torch.no_grad():
            output = net(*args)
        if output.is_cuda:
            torch.cuda.synchronize(output.device)
        return output

    return run


def backend_order() -> list[str]:
    """The reference backend (the baseline of the ratios) first, then the others from the highest priority."""
    return ["reference", *(name for name in dispatch.names() if name != "reference")]


def _backend_runners(net: nn.Module, args: tuple[Tensor, ...]) -> tuple[dict[str, Callable[[], Tensor]], list[Result]]:
    """The runners of the backends that serve ``net`` on ``args``, and a Result with the reason for each other."""
    runners: dict[str, Callable[[], Tensor]] = {}
    refused: list[Result] = []
    for name in backend_order():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = dispatch.load(name)
        if loaded is None:
            reason = str(caught[0].message) if caught else "failed to load"
            refused.append(Result(name, reason=f"not available here: {reason}"))
            continue
        run = _torch_runner(net, args, name)
        try:
            run()
        except dispatch.BackendUnavailable as err:
            refused.append(Result(name, reason=f"cannot serve this model: {err}"))
            continue
        runners[name] = run
    return runners, refused


def _onnx_runner(task: Any, net: nn.Module, inputs: dict[str, Tensor], folder: Path, threads: int) -> Any:
    """(runner, max abs diff onnxruntime vs PyTorch) for the task's ONNX export of ``net``; raises GrukitError
    when the task cannot export this model to ONNX or onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise GrukitError("onnxruntime is not installed: pip install 'grukit[onnx]'") from None
    path, diff = task.export(net, inputs, folder / "model.onnx", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {name: value.numpy() for name, value in inputs.items()}
    return (lambda: session.run(None, feeds)), diff


def benchmark(task: Any, net: nn.Module, threads: int, device: torch.device) -> tuple[list[Result], int]:
    """Time ``net`` (eval mode; its ``inference_module``) on ``task.example_inputs()`` on ``device`` with each
    backend, and with onnxruntime (CPU). Returns (one Result per backend and onnxruntime, in that order; timed
    rounds)."""
    net = net.eval().cpu()  # the ONNX export reads it on the CPU
    inputs = task.example_inputs()
    args = tuple(value.to(device) for value in inputs.values())
    module = inference_module(task, net)
    on_device = module if device.type == "cpu" else copy.deepcopy(module).to(device)
    if uses_grukit_recurrence(net):
        runners, refused = _backend_runners(on_device, args)
    else:  # a torch LSTM or transformer: no grukit backend is involved, whichever is forced
        runners = {"pytorch": _torch_runner(on_device, args, None)}
        refused = [Result(name, reason="not used: this model has no grukit recurrence") for name in backend_order()]
    onnx_diff = None
    with tempfile.TemporaryDirectory() as folder:
        try:
            runners["onnxruntime"], onnx_diff = _onnx_runner(task, net, inputs, Path(folder), threads)
        except GrukitError as err:
            refused.append(Result("onnxruntime", reason=f"cannot serve this model: {err}"))
        medians, rounds = interleaved_medians(runners)
    first = next(iter(runners))  # a PyTorch runner: the reference backend, or "pytorch"
    expected = runners[first]()
    results = []
    for name, seconds in medians.items():
        diff = onnx_diff if name == "onnxruntime" else float((runners[name]() - expected).abs().max())
        results.append(Result(name, median_ms=seconds * 1e3, speedup=medians[first] / seconds, max_abs_diff=diff))
    order = [*backend_order(), "pytorch", "onnxruntime"]
    results += refused
    return sorted(results, key=lambda r: order.index(r.name)), rounds


def table(results: list[Result], batch: int, example: str, device: torch.device) -> str:
    """The printed benchmark table: median ms per batch, speed relative to the first row, max abs diff."""
    timed = [r for r in results if r.median_ms is not None]
    first = timed[0].name if timed else "-"
    where = "" if device.type == "cpu" else f" on {device} (onnxruntime: CPU)"
    lines = [
        f"inference on {batch} real {example} per call{where} (median of interleaved calls)",
        f"{'runtime':<14}{'ms/batch':>10}{f'speed vs {first}':>20}{'max abs diff':>14}",
    ]
    for r in results:
        if r.median_ms is None:
            lines.append(f"{r.name:<14}{'-':>10}  {r.reason}")
            continue
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        lines.append(f"{r.name:<14}{r.median_ms:>10.3f}{f'{r.speedup:.2f}x':>20}{diff:>14}")
    return "\n".join(lines)


def as_json(results: list[Result]) -> list[dict[str, Any]]:
    """The results as JSON-ready dicts (None where a runner did not run)."""
    return [asdict(r) for r in results]
