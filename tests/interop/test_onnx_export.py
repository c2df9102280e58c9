"""ONNX export: onnxruntime (CPUExecutionProvider) on the exported file equals grukit's eval-mode forward.

One file per configuration serves several batch sizes and sequence lengths (dynamic axes).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from grukit.interop.onnx_export import export_onnx  # noqa: E402
from grukit.nn.gru import GRU  # noqa: E402

ATOL = 1e-5
SHAPES = [(1, 1), (5, 3), (12, 8)]  # (T, B), all run on the same exported file
ALLOWED_OPS = {"GRU", "Transpose", "Reshape", "Identity", "Concat", "Slice", "Shape", "Expand"}
ALLOWED_OPS |= {"Equal", "Unsqueeze", "Where"}  # lengths with h0: h_n = h0 for empty sequences

CONFIGS = [
    {},
    {"bidirectional": True},
    {"reverse": True},
    {"num_layers": 2, "reset_after": False},
    {"num_layers": 3, "bidirectional": True, "batch_first": True},
    {"num_layers": 2, "reverse": True, "batch_first": True, "bias": False},
    {"bidirectional": True, "bias": False, "reset_after": False},
    {"num_layers": 2, "bidirectional": True, "learn_init": True},
    {"reverse": True, "batch_first": True, "learn_init": True, "reset_after": False},
    {"num_layers": 2, "dropout": 0.5, "recurrent_dropout": 0.3, "dropconnect": 0.2},  # training-only: exported in eval
]


def _config_id(config: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in config.items()) or "default"


def _gru(config: dict, seed: int = 0) -> GRU:
    torch.manual_seed(seed)
    gru = GRU(3, 4, **config)
    if gru.learn_init:
        with torch.no_grad():
            gru.initial_state.normal_()
    return gru


def _session(path: Path) -> "ort.InferenceSession":
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _compare(gru: GRU, session, steps: int, batch: int, initial_state: bool, lengths: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(steps * 100 + batch)
    shape = (batch, steps, gru.input_size) if gru.batch_first else (steps, batch, gru.input_size)
    x = rng.standard_normal(shape).astype(np.float32)
    stacked = gru.num_layers * (2 if gru.bidirectional else 1)
    h0 = rng.standard_normal((stacked, batch, gru.hidden_size)).astype(np.float32)
    feed = {"input": x}
    if initial_state:
        feed["h0"] = h0
    if lengths is not None:
        feed["lengths"] = lengths.astype(np.int32)
    output, h_n = session.run(["output", "h_n"], feed)
    training = gru.training
    with torch.no_grad():
        ours_y, ours_h = gru.eval()(
            torch.from_numpy(x),
            torch.from_numpy(h0) if initial_state else None,
            None if lengths is None else torch.from_numpy(lengths),
        )
    gru.train(training)
    assert output.shape == tuple(ours_y.shape) and h_n.shape == tuple(ours_h.shape)
    np.testing.assert_allclose(output, ours_y.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(h_n, ours_h.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("initial_state", [False, True])
def test_onnxruntime_matches_grukit(tmp_path: Path, config: dict, initial_state: bool) -> None:
    gru = _gru(config)
    gru.train()  # export always gives eval semantics, whatever the module's mode
    path = export_onnx(gru, tmp_path / "gru.onnx", initial_state=initial_state)
    assert path == tmp_path / "gru.onnx" and path.is_file()
    session = _session(path)
    for steps, batch in SHAPES:
        _compare(gru, session, steps, batch, initial_state)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"num_layers": 2, "bidirectional": True},
        {"reverse": True, "batch_first": True, "reset_after": False},
        {"bidirectional": True, "learn_init": True, "batch_first": True},
    ],
    ids=_config_id,
)
@pytest.mark.parametrize("initial_state", [False, True])
def test_lengths_match_grukit(tmp_path: Path, config: dict, initial_state: bool) -> None:
    """sequence_lens has grukit's lengths semantics in onnxruntime: zeros past each length, h_n at the last
    valid step, reverse starting there, and (through a Where in the graph) h_n = h0 for length 0."""
    gru = _gru(config, seed=1)
    session = _session(export_onnx(gru, tmp_path / "gru.onnx", initial_state=initial_state, lengths=True))
    rng = np.random.default_rng(7)
    _compare(gru, session, 6, 4, initial_state, np.array([6, 3, 1, 0]))
    for steps, batch in [(1, 1), (9, 7), (4, 16)]:
        _compare(gru, session, steps, batch, initial_state, rng.integers(0, steps + 1, batch))


def test_graph_structure(tmp_path: Path) -> None:
    gru = GRU(3, 4, num_layers=3, bidirectional=True, batch_first=True, learn_init=True)
    model = onnx.load(str(export_onnx(gru, tmp_path / "gru.onnx", opset=14)))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("GRU") == 3 and set(ops) <= ALLOWED_OPS
    assert model.opset_import[0].version == 14

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in model.graph.input] == [("input", ["batch", "seq_len", 3])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [
        ("output", ["batch", "seq_len", 8]),
        ("h_n", [6, "batch", 4]),
    ]
    gru_node = next(node for node in model.graph.node if node.op_type == "GRU")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gru_node.attribute}
    assert attributes == {"hidden_size": 4, "direction": b"bidirectional", "linear_before_reset": 1}
    session = _session(tmp_path / "gru.onnx")
    _compare(gru, session, 5, 2, initial_state=False)


def test_float64_module_exports_float32(tmp_path: Path) -> None:
    gru = GRU(3, 4, dtype=torch.float64)
    session = _session(export_onnx(gru, tmp_path / "gru.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    output, _ = session.run(None, {"input": x.astype(np.float32)})
    with torch.no_grad():
        expected, _ = gru(torch.from_numpy(x))
    np.testing.assert_allclose(output, expected.numpy(), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"layer_norm": True}, "layer_norm=True.*no layer normalisation"), ({"zoneout": 0.1}, "zoneout=0.1.*mixes")],
)
def test_inexpressible_extensions_raise_and_write_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_onnx(GRU(3, 4, **kwargs), tmp_path / "gru.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "gru.onnx"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(GRU(3, 4), target)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset must be an int in \\[14"):
        export_onnx(GRU(3, 4), tmp_path / "gru.onnx", opset=9)
    with pytest.raises(TypeError, match=r"grukit\.nn\.GRU"):
        export_onnx(torch.nn.GRU(3, 4), tmp_path / "gru.onnx")
    with pytest.raises(IsADirectoryError):
        export_onnx(GRU(3, 4), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "gru.onnx"
    export_onnx(GRU(3, 4), target)
    old = target.read_bytes()
    # An export that fails validation leaves the existing file as it was.
    with pytest.raises(ValueError):
        export_onnx(GRU(3, 4, layer_norm=True), target)
    assert target.read_bytes() == old

    # A failure at the final rename leaves the old file and removes the temporary one.
    def failing_replace(src, dst):
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        export_onnx(GRU(3, 5), target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["gru.onnx"]
    monkeypatch.undo()
    export_onnx(GRU(3, 5), target)  # a successful overwrite replaces it whole
    assert target.read_bytes() != old and [p.name for p in tmp_path.iterdir()] == ["gru.onnx"]
    assert onnx.load(str(target)).graph.output[1].type.tensor_type.shape.dim[2].dim_value == 5
