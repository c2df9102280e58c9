"""Export a trained forecaster's network to ONNX (grukit's ONNX GRU graph plus the head) or TorchScript.

The exported graph maps the normalised inputs of ``Windows.batch`` to sorted quantiles:
past (L, B, step_features), future (B, future_features), base (B, H) -> quantiles (B, H, Q), with a
dynamic batch B. Building those inputs (per-window normalisation, covariates, calendar) and undoing the
normalisation (``quantiles * std + mean``) stays in grukit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from grukit.errors import GrukitError
from grukit.interop.onnx_export import build_onnx_model
from grukit.tasks.forecast.model import SeasonBlockForecaster, sorted_quantiles
from grukit.workflow.export import export_checked


class _Sorted(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, past: Tensor, future: Tensor, base: Tensor) -> Tensor:
        return sorted_quantiles(self.net(past, future, base))


def onnx_model(net: SeasonBlockForecaster):
    """The ONNX model of ``net`` (eval semantics): the GRU as ONNX GRU nodes, the head as Gemm/Erf/TopK."""
    from onnx import TensorProto, helper, numpy_helper

    if net.arch != "gru":
        raise GrukitError(f"export onnx: only model=gru has an ONNX graph, not {net.arch}; use format=torchscript")
    try:
        model = build_onnx_model(net.gru)
    except ValueError as err:
        raise GrukitError(f"export onnx: {err}; use format=torchscript") from None
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["past" if name == "input" else name for name in node.input]
    graph.input[0].name = "past"
    steps, n_q = net.horizon, net.n_quantiles
    lin1, lin2 = net.head[0], net.head[3]

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value).reshape(np.shape(value)), name))
        return name

    nodes = [
        helper.make_node("Gather", ["h_n", const("last_layer", np.array(net.gru.num_layers - 1))], ["state"], axis=0),
        helper.make_node("Concat", ["state", "future"], ["head_in"], axis=1),
        helper.make_node(
            "Gemm",
            ["head_in", const("w1", lin1.weight.detach().numpy()), const("b1", lin1.bias.detach().numpy())],
            ["z1"],
            transB=1,
        ),
        # GELU (exact): 0.5 * z * (1 + erf(z / sqrt(2)))
        helper.make_node("Mul", ["z1", const("inv_sqrt2", np.array(1 / math.sqrt(2), dtype=np.float32))], ["z1s"]),
        helper.make_node("Erf", ["z1s"], ["erf"]),
        helper.make_node("Add", ["erf", const("one", np.array(1.0, dtype=np.float32))], ["erf1"]),
        helper.make_node("Mul", ["z1", "erf1"], ["z1e"]),
        helper.make_node("Mul", ["z1e", const("half", np.array(0.5, dtype=np.float32))], ["a1"]),
        helper.make_node(
            "Gemm",
            ["a1", const("w2", lin2.weight.detach().numpy()), const("b2", lin2.bias.detach().numpy())],
            ["z2"],
            transB=1,
        ),
        helper.make_node("Reshape", ["z2", const("bhq", np.array([0, steps, n_q], dtype=np.int64))], ["delta"]),
        helper.make_node("Unsqueeze", ["base", const("axis2", np.array([2], dtype=np.int64))], ["base3"]),
        helper.make_node("Add", ["base3", "delta"], ["raw0"]),
        helper.make_node("Add", ["raw0", const("offsets", net.quantile_offsets.detach().numpy())], ["raw"]),
        helper.make_node(
            "TopK",
            ["raw", const("k", np.array([n_q], dtype=np.int64))],
            ["quantiles", "order"],
            axis=-1,
            largest=0,
            sorted=1,
        ),
    ]
    graph.node.extend(nodes)
    graph.input.extend(
        [
            helper.make_tensor_value_info(
                "future", TensorProto.FLOAT, ["batch", lin1.in_features - net.gru.hidden_size]
            ),
            helper.make_tensor_value_info("base", TensorProto.FLOAT, ["batch", steps]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, ["batch", steps, n_q]))
    return model


def export(net: SeasonBlockForecaster, inputs: dict[str, Tensor], path: Path, fmt: str) -> tuple[Path, float]:
    """Write ``net`` as ``fmt`` ("onnx" or "torchscript") to ``path`` (atomically) and run it on the real
    ``inputs`` (from ``Windows.batch``) next to PyTorch. Returns (path, max abs difference of the quantiles)."""
    net = net.eval().cpu()
    args = {name: inputs[name] for name in ("past", "future", "base")}
    return export_checked(_Sorted(net), args, path, fmt, lambda: onnx_model(net))
