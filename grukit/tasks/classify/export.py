"""Export a trained classifier to ONNX (grukit's ONNX GRU graph with lengths, pooling and the head) or TorchScript.

The ONNX graph takes the inputs of ``ClassifyTask`` batches and returns class logits, batch B and length T
dynamic:

    x (T, B, F) float32 | tokens (B, T) int64 --Gather(embedding), Transpose--> (T, B, E)
    lengths (B,) int64 --Cast--> int32 sequence_lens of the ONNX GRU nodes
    pool mean: Sum over T of the GRU output (zero past each length) / max(length, 1); pool last: the last
    layer's final states, directions side by side
    head: Gemm -> logits (B, C)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from grukit.errors import GrukitError
from grukit.interop.onnx_export import build_onnx_model
from grukit.nn import GRU
from grukit.tasks.classify.text import TokenClassifier
from grukit.workflow.export import export_checked


def onnx_model(net: nn.Module) -> Any:
    """The ONNX model of a classifier (eval semantics): inputs x or tokens, and lengths; output logits."""
    from onnx import TensorProto, helper, numpy_helper

    embedding = net.embedding if isinstance(net, TokenClassifier) else None
    classifier = net.classifier if embedding is not None else net
    gru = getattr(classifier, "gru", None)
    if not isinstance(gru, GRU):
        raise GrukitError("export format=onnx supports the GRU classifier (model=gru); use format=torchscript")
    try:
        model = build_onnx_model(gru, lengths=True)
    except ValueError as err:
        raise GrukitError(f"export onnx: {err}; use format=torchscript") from None
    graph = model.graph

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    for node in graph.node:  # the GRU graph's int32 "lengths" input becomes the Cast of our int64 one
        node.input[:] = ["lengths_i32" if name == "lengths" else name for name in node.input]
    first = [helper.make_node("Cast", ["lengths"], ["lengths_i32"], to=TensorProto.INT32)]
    del graph.input[:]
    if embedding is None:
        for node in graph.node:
            node.input[:] = ["x" if name == "input" else name for name in node.input]
        graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq_len", "batch", gru.input_size]))
    else:
        table = const("embedding", embedding.weight.detach().float().numpy())
        first += [
            helper.make_node("Gather", [table, "x"], ["embedded"], axis=0),  # (B, T, E)
            helper.make_node("Transpose", ["embedded"], ["input"], perm=[1, 0, 2]),  # (T, B, E)
        ]
        graph.input.append(helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "seq_len"]))
    graph.input.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    directions = 2 if gru.bidirectional else 1
    if classifier.pool == "mean":
        pool = [
            helper.make_node("ReduceSum", ["output", const("axis0", np.array([0]))], ["summed"], keepdims=0),
            helper.make_node("Cast", ["lengths"], ["lengths_f"], to=TensorProto.FLOAT),
            helper.make_node("Max", ["lengths_f", const("one", np.array(1.0, dtype=np.float32))], ["count"]),
            helper.make_node("Unsqueeze", ["count", const("axis1", np.array([1]))], ["count_b1"]),
            helper.make_node("Div", ["summed", "count_b1"], ["pooled"]),  # (B, D*H)
        ]
    else:
        big = np.array([np.iinfo(np.int64).max])
        pool = [
            helper.make_node("Slice", ["h_n", const("minus_d", np.array([-directions])), const("end", big)], ["top"]),
            helper.make_node("Transpose", ["top"], ["top_bdh"], perm=[1, 0, 2]),  # (B, D, H)
            helper.make_node("Reshape", ["top_bdh", const("b_dh", np.array([0, -1]))], ["pooled"]),
        ]
    linear = classifier.head[-1]
    weight, bias = (
        const(n, p.detach().float().numpy()) for n, p in (("head_w", linear.weight), ("head_b", linear.bias))
    )
    head = [helper.make_node("Gemm", ["pooled", weight, bias], ["logits"], transB=1)]
    nodes = [*first, *graph.node, *pool, *head]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", linear.out_features]))
    return model


def export(net: nn.Module, inputs: dict[str, Tensor], path: Path, fmt: str) -> tuple[Path, float]:
    """Write ``net`` as ``fmt`` ("onnx" or "torchscript") to ``path`` (atomically) and run it on the real
    ``inputs`` (x, lengths) next to PyTorch. Returns (path, max abs difference of the logits)."""
    net = net.eval().cpu()
    return export_checked(net, inputs, path, fmt, lambda: onnx_model(net))
