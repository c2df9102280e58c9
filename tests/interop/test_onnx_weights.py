"""ONNX GRU operator weight layout: exact round trips, and the layout checked against the operator's
equations as the ONNX specification writes them (an independent numpy implementation, no onnxruntime)."""

import numpy as np
import pytest
import torch

from grukit.interop.onnx_weights import from_onnx_weights, to_onnx_weights
from grukit.nn.gru import GRU


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _onnx_gru_spec(x: np.ndarray, layer: dict, h0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX GRU operator from its spec, float64. x: (T, B, I), h0: (D, B, H) -> Y (T, D, B, H), Y_h (D, B, H)."""
    w, r, b = (np.asarray(layer[k], dtype=np.float64) for k in ("W", "R", "B"))
    hidden, direction = layer["hidden_size"], layer["direction"]
    steps, batch = x.shape[:2]
    dirs = 2 if direction == "bidirectional" else 1
    y = np.zeros((steps, dirs, batch, hidden))
    y_h = np.zeros((dirs, batch, hidden))
    for d in range(dirs):
        wz, wr, wh = np.split(w[d], 3)
        rz, rr, rh = np.split(r[d], 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(b[d], 6)
        h = np.zeros((batch, hidden)) if h0 is None else h0[d].astype(np.float64)
        backwards = direction == "reverse" or d == 1
        for t in range(steps - 1, -1, -1) if backwards else range(steps):
            xt = x[t].astype(np.float64)
            z = _sigmoid(xt @ wz.T + h @ rz.T + wbz + rbz)
            rt = _sigmoid(xt @ wr.T + h @ rr.T + wbr + rbr)
            if layer["linear_before_reset"]:
                candidate = np.tanh(xt @ wh.T + rt * (h @ rh.T + rbh) + wbh)
            else:
                candidate = np.tanh(xt @ wh.T + (rt * h) @ rh.T + rbh + wbh)
            h = (1 - z) * candidate + z * h
            y[t, d] = h
        y_h[d] = h
    return y, y_h


def _assert_same_gru(a: GRU, b: GRU) -> None:
    for name in ("input_size", "hidden_size", "num_layers", "bias", "bidirectional", "reverse", "reset_after"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.learn_init == b.learn_init
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


CONFIGS = [
    {"num_layers": 1},
    {"num_layers": 3},
    {"num_layers": 2, "reverse": True},
    {"num_layers": 1, "bidirectional": True},
    {"num_layers": 3, "bidirectional": True},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_exact(config: dict, reset_after: bool, bias: bool) -> None:
    gru = GRU(5, 4, bias=bias, reset_after=reset_after, **config)
    layers = to_onnx_weights(gru)
    d = 2 if gru.bidirectional else 1
    for k, layer in enumerate(layers):
        assert layer["W"].shape == (d, 12, 5 if k == 0 else 4 * d)
        assert layer["R"].shape == (d, 12, 4)
        assert layer["B"].shape == (d, 24)
        assert layer["linear_before_reset"] == int(reset_after) and layer["hidden_size"] == 4
        assert layer["direction"] == ("bidirectional" if d == 2 else "reverse" if gru.reverse else "forward")
        if not bias:
            assert not layer["B"].any()
    back = from_onnx_weights(layers, bias=bias)
    _assert_same_gru(gru, back)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_round_trip_learn_init_and_float64(bidirectional: bool) -> None:
    gru = GRU(3, 2, num_layers=2, bidirectional=bidirectional, learn_init=True, dtype=torch.float64)
    with torch.no_grad():
        gru.initial_state.normal_()
    layers = to_onnx_weights(gru)
    assert layers[0]["initial_h"].shape == (2 if bidirectional else 1, 2)
    assert layers[0]["W"].dtype == np.float64
    back = from_onnx_weights(layers, batch_first=True)
    assert back.batch_first and back.weight_ih_l0.dtype == torch.float64
    _assert_same_gru(gru, back)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("reset_after", [True, False])
def test_layout_matches_onnx_specification(config: dict, reset_after: bool) -> None:
    """grukit's forward equals the ONNX equations evaluated on the exported W, R, B (gate order, transposes,
    bias halves, linear_before_reset and direction all matter here)."""
    torch.manual_seed(0)
    gru = GRU(3, 4, reset_after=reset_after, dtype=torch.float64, **config).eval()
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    h0 = np.random.default_rng(1).standard_normal((gru.num_layers * (2 if gru.bidirectional else 1), 2, 4))
    with torch.no_grad():
        ours_y, ours_h = gru(torch.from_numpy(x), torch.from_numpy(h0))
    inputs, states = x, []
    for k, layer in enumerate(to_onnx_weights(gru)):
        d = layer["W"].shape[0]
        y, y_h = _onnx_gru_spec(inputs, layer, h0[k * d : (k + 1) * d])
        inputs = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)  # (T, B, D·H)
        states.append(y_h)
    np.testing.assert_allclose(ours_y.numpy(), inputs, atol=1e-12, rtol=0)
    np.testing.assert_allclose(ours_h.numpy(), np.concatenate(states), atol=1e-12, rtol=0)


def test_training_only_extensions_pass_and_inexpressible_ones_raise() -> None:
    assert len(to_onnx_weights(GRU(2, 3, 2, dropout=0.1, recurrent_dropout=0.2, dropconnect=0.3))) == 2
    with pytest.raises(ValueError, match="layer_norm"):
        to_onnx_weights(GRU(2, 3, layer_norm=True))
    with pytest.raises(ValueError, match="zoneout"):
        to_onnx_weights(GRU(2, 3, zoneout=0.2))


def test_from_onnx_weights_bad_inputs() -> None:
    good = to_onnx_weights(GRU(2, 3, num_layers=2))
    with pytest.raises(TypeError, match="one dict per ONNX GRU"):
        from_onnx_weights(good[0])
    with pytest.raises(ValueError, match="lacks"):
        from_onnx_weights([{"W": good[0]["W"]}])
    with pytest.raises(ValueError, match="direction"):
        from_onnx_weights([good[0], {**good[1], "direction": "reverse"}])
    with pytest.raises(ValueError, match="direction must be one of"):
        from_onnx_weights([{**good[0], "direction": "sideways"}])
    with pytest.raises(ValueError, match="linear_before_reset must be the same"):
        from_onnx_weights([good[0], {**good[1], "linear_before_reset": 0}])
    with pytest.raises(ValueError, match=r"layer 1: W must have shape \(1, 9, 3\)"):
        from_onnx_weights([good[0], {**good[1], "W": good[0]["W"]}])
    with pytest.raises(ValueError, match="hidden_size=4"):
        from_onnx_weights([{**good[0], "hidden_size": 4}])
    with pytest.raises(ValueError, match="drop the non-zero biases"):
        from_onnx_weights(good, bias=False)
    with pytest.raises(ValueError, match="reverse is fixed"):
        from_onnx_weights(good, reverse=True)
    with pytest.raises(ValueError, match="initial_h must be given for every layer"):
        from_onnx_weights([{**good[0], "initial_h": np.zeros((1, 3), np.float32)}, good[1]])


def test_missing_bias_means_bias_false() -> None:
    gru = GRU(2, 3, bias=False)
    layers = [{k: v for k, v in layer.items() if k != "B"} for layer in to_onnx_weights(gru)]
    _assert_same_gru(gru, from_onnx_weights(layers))
