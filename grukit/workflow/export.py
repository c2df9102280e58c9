"""Export a task's network to ONNX or TorchScript and check the file against PyTorch on real inputs, for every
task: the task gives the module (inputs -> output), named example inputs (batch on the second axis of 3-d
inputs, else the first) and, for ONNX, a builder of the ONNX model."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grukit.backends import dispatch
from grukit.errors import GrukitError
from grukit.fileio import write_atomic


def _first_of_batch(value: Any) -> Any:
    return value[:, :1] if value.ndim == 3 else value[:1]


def batch_size(inputs: dict[str, Tensor]) -> int:
    """The batch size of export inputs (the second axis of a 3-d input, else the first)."""
    value = next(iter(inputs.values()))
    return int(value.shape[1] if value.ndim == 3 else value.shape[0])


def export_checked(
    module: nn.Module,
    inputs: dict[str, Tensor],
    path: Path,
    fmt: str,
    onnx_builder: Callable[[], Any] | None = None,
) -> tuple[Path, float]:
    """Write ``module`` as ``fmt`` ("onnx" or "torchscript") to ``path`` (atomically), run the file on
    ``inputs`` and on a batch of one next to PyTorch, and return (path, max abs difference of the outputs).
    ``onnx_builder()`` returns the ONNX model (inputs named as ``inputs``, one output); without it ONNX is an error."""
    module = module.eval().cpu()
    args = tuple(inputs.values())
    with torch.no_grad():
        expected = module(*args).numpy()
    expected = np.concatenate([expected, expected[:1]])
    if fmt == "onnx":
        if onnx_builder is None:
            raise GrukitError("export format=onnx is not available for this task yet; use format=torchscript")
        try:
            import onnx
            import onnxruntime as ort
        except ImportError:
            raise GrukitError("export format=onnx needs onnx and onnxruntime: pip install 'grukit[onnx]'") from None
        model = onnx_builder()
        onnx.checker.check_model(model, full_check=True)
        write_atomic(path, model.SerializeToString())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {name: value.numpy() for name, value in inputs.items()}
        (got,) = session.run(None, feeds)
        (one,) = session.run(None, {k: _first_of_batch(v) for k, v in feeds.items()})
    else:
        # Trace through the pure-PyTorch reference backend, so the file needs no grukit C++ extension.
        with dispatch.force("reference"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, args, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        write_atomic(path, buffer.getvalue())
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            got = loaded(*args).numpy()
            one = loaded(*(_first_of_batch(a) for a in args)).numpy()
    return path, float(np.abs(np.concatenate([got, one]) - expected).max())
