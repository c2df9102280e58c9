"""Export a grukit GRU to an ONNX model built on the ONNX ``GRU`` operator (one node per layer).

The graph is written with ``onnx.helper`` (no tracing), so it is small and readable in Netron:

    input (T, B, I) | (B, T, I) --[Transpose if batch_first]--> x (T, B, I)
    for each layer k:  GRU(x, W_lk, R_lk, B_lk, [lengths], [h0[k·D:(k+1)·D]]) -> Y (T, D, B, H), Y_h (D, B, H)
                       Y --Transpose (T, B, D, H)--Reshape--> x (T, B, D·H)     (last layer: (B, T, D·H) if batch_first)
    h_n = Concat(Y_h over layers) (L·D, B, H)      (with lengths and an initial state: Y_h = h0 where length = 0)

Batch and sequence length are dynamic (``batch``, ``seq_len``), so one file serves every batch size and
length. The model computes in float32 and always with eval-mode semantics (no dropout).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from grukit.interop.onnx_weights import check_onnx_expressible, to_onnx_weights
from grukit.nn.gru import GRU

DEFAULT_OPSET = 17
MIN_OPSET = 14


def _learned_initial_state(gru: GRU) -> np.ndarray:
    """The learned initial state of ``gru`` (L·D, H) as a float32 host array."""
    return gru.initial_state.detach().cpu().float().numpy()


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the onnx package: pip install 'grukit[onnx]'") from err
    return onnx


def build_onnx_model(
    gru: GRU, *, opset: int = DEFAULT_OPSET, initial_state: bool = False, lengths: bool = False
) -> Any:
    """The ``onnx.ModelProto`` that ``export_onnx`` writes (checked with ``onnx.checker``); see there."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    check_onnx_expressible(gru)
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset must be an int in [{MIN_OPSET}, {newest}] (the installed onnx's newest), got {opset!r}"
        )
    layers = to_onnx_weights(gru)
    directions = 2 if gru.bidirectional else 1
    hidden, stacked = gru.hidden_size, gru.num_layers * directions
    nodes: list[Any] = []
    initializers: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def float32(array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float32)

    seq_batch = ["batch", "seq_len"] if gru.batch_first else ["seq_len", "batch"]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [*seq_batch, gru.input_size])]
    x = "input"
    if gru.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["input_time_major"], perm=[1, 0, 2]))
        x = "input_time_major"  # (T, B, I)

    h0 = ""
    if initial_state:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [stacked, "batch", hidden]))
        h0 = "h0"
    elif gru.learn_init:
        # initial_state (L·D, 1, H) broadcast to (L·D, B, H) by Expand with the shape [1, B, 1].
        learned = constant("initial_state", _learned_initial_state(gru).reshape(stacked, 1, hidden))
        one = constant("one_i64", np.array([1], dtype=np.int64))
        two = constant("two_i64", np.array([2], dtype=np.int64))
        nodes += [
            helper.make_node("Shape", [x], ["input_shape"]),  # x: (T, B, I)
            helper.make_node("Slice", ["input_shape", one, two], ["batch_size"]),
            helper.make_node("Concat", [one, "batch_size", one], ["h0_broadcast_shape"], axis=0),
            helper.make_node("Expand", [learned, "h0_broadcast_shape"], ["h0_learned"]),
        ]
        h0 = "h0_learned"
    sequence_lens = ""
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))
        sequence_lens = "lengths"
        if h0:
            # onnxruntime returns Y_h = 0 for a sequence of length 0; grukit returns its initial state.
            zero = constant("zero_i32", np.array(0, dtype=np.int32))
            axes_0_2 = constant("axes_0_2", np.array([0, 2], dtype=np.int64))
            nodes.append(helper.make_node("Equal", ["lengths", zero], ["empty_sequence"]))  # (B,)
            nodes.append(
                helper.make_node("Unsqueeze", ["empty_sequence", axes_0_2], ["empty_sequence_1b1"])
            )  # (1, B, 1)

    flatten_shape = constant("flatten_shape", np.array([0, 0, -1], dtype=np.int64))
    states = []
    for k, layer in enumerate(layers):
        operands = [x, constant(f"W_l{k}", float32(layer["W"])), constant(f"R_l{k}", float32(layer["R"]))]
        operands.append(constant(f"B_l{k}", float32(layer["B"])) if gru.bias else "")
        operands.append(sequence_lens)
        if h0:
            starts = constant(f"h0_start_l{k}", np.array([k * directions], dtype=np.int64))
            ends = constant(f"h0_end_l{k}", np.array([(k + 1) * directions], dtype=np.int64))
            axes = constant("axis0_i64", np.array([0], dtype=np.int64)) if k == 0 else "axis0_i64"
            nodes.append(helper.make_node("Slice", [h0, starts, ends, axes], [f"h0_l{k}"]))  # (D, B, H)
            operands.append(f"h0_l{k}")
        while operands[-1] == "":
            operands.pop()
        nodes.append(
            helper.make_node(
                "GRU",
                operands,
                [f"Y_l{k}", f"Y_h_l{k}"],  # (T, D, B, H), (D, B, H)
                name=f"gru_l{k}",
                hidden_size=hidden,
                direction=layer["direction"],
                linear_before_reset=layer["linear_before_reset"],
            )
        )
        if sequence_lens and h0:
            nodes.append(helper.make_node("Where", ["empty_sequence_1b1", f"h0_l{k}", f"Y_h_l{k}"], [f"h_n_l{k}"]))
            states.append(f"h_n_l{k}")
        else:
            states.append(f"Y_h_l{k}")
        last = k == gru.num_layers - 1
        # (T, D, B, H) -> (T, B, D, H), or (B, T, D, H) for the batch-first output; then merge D and H.
        perm = [2, 0, 1, 3] if last and gru.batch_first else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"Y_l{k}"], [f"Y_l{k}_transposed"], perm=perm))
        x = "output" if last else f"x_l{k + 1}"
        nodes.append(helper.make_node("Reshape", [f"Y_l{k}_transposed", flatten_shape], [x]))
    if len(states) == 1:
        nodes.append(helper.make_node("Identity", states, ["h_n"]))
    else:
        nodes.append(helper.make_node("Concat", states, ["h_n"], axis=0))

    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [*seq_batch, directions * hidden]),
        helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [stacked, "batch", hidden]),
    ]
    doc = f"grukit GRU({gru.extra_repr()}), exported with eval-mode semantics"
    graph = helper.make_graph(nodes, "grukit_gru", inputs, outputs, initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="grukit")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    return model


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``, so that
    ``path`` is either its old content or the complete new one, never half written."""
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: its directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    gru: GRU,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    initial_state: bool = False,
    lengths: bool = False,
) -> Path:
    """Write ``gru`` as an ONNX model that computes its eval-mode forward with the ONNX GRU operator.

    Inputs: ``input`` float32 (T, B, I), or (B, T, I) when ``gru.batch_first``; with ``initial_state``,
    ``h0`` float32 (L·D, B, H) (otherwise the state starts at zeros, or at the learned ``initial_state``
    broadcast over the batch when ``gru.learn_init``); with ``lengths``, ``lengths`` int32 (B,) in [0, T],
    fed to the ONNX operator's ``sequence_lens``, with grukit's ``lengths`` semantics (outputs past each
    length are zero, h_n holds each sequence's state at its last valid step, the reverse direction starts
    there; verified on onnxruntime, which returns Y_h = 0 for a length-0 sequence, so the graph puts the
    initial state back there with a Where).
    Outputs: ``output`` (T, B, D·H) or (B, T, D·H), and ``h_n`` (L·D, B, H), as grukit returns them.
    T and B are dynamic. Weights are stored as float32.

    opset: the ONNX opset, at least 14. The file is checked with ``onnx.checker`` and written atomically
    (a temporary file in the same directory, then ``os.replace``). Returns ``path`` as a ``Path``.

    Raises ValueError for extensions with no ONNX GRU equivalent in eval (``layer_norm``, ``zoneout`` > 0);
    ``recurrent_dropout``, ``dropconnect`` and ``dropout`` act only in training and export fine.
    FileNotFoundError when the target directory does not exist (nothing is written).
    """
    if not isinstance(gru, GRU):
        raise TypeError(f"export_onnx expects a grukit.nn.GRU, got {type(gru).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: its directory {str(path.parent)!r} does not exist")
    model = build_onnx_model(gru, opset=opset, initial_state=initial_state, lengths=lengths)
    _write_atomically(path, model.SerializeToString())
    return path
