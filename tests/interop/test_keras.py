"""Keras interop: exact round trips, and numerical equivalence with real Keras 3 layers (torch backend).

Keras must run on its torch backend; the variable is set here, before anything imports keras. Tests that
need Keras take the ``keras`` fixture and skip when it is missing; the round trips run without it.
"""

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported anywhere in this process

import numpy as np
import pytest
import torch

from grukit.interop.keras import from_keras_weights, to_keras_weights
from grukit.nn.gru import GRU

ATOL = 1e-5
# Keras' own get_weights/set_weights on the torch backend call np.array(tensor) the NumPy-2-deprecated way.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept:DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras", exc_type=ImportError)  # also when keras fails to load its backend
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()!r} backend")
    return keras


def _np(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _keras_gru(keras, hidden: int, reset_after: bool, use_bias: bool = True, **kwargs):
    return keras.layers.GRU(
        hidden, return_sequences=True, return_state=True, reset_after=reset_after, use_bias=use_bias, **kwargs
    )


def _run(layer, x: np.ndarray, initial_state=None) -> list[np.ndarray]:
    """Call a Keras layer (building it on first call) and return its outputs as numpy arrays."""
    out = layer(x) if initial_state is None else layer(x, initial_state=initial_state)
    return [_np(o) for o in out]


def _eval(gru: GRU, x: np.ndarray, h0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        y, h = gru.eval()(torch.from_numpy(x), None if h0 is None else torch.from_numpy(h0))
    return y.numpy(), h.numpy()


# --------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_weight_shapes(reset_after: bool, bias: bool, bidirectional: bool) -> None:
    gru = GRU(3, 4, num_layers=2, bias=bias, bidirectional=bidirectional, reset_after=reset_after)
    layers = to_keras_weights(gru)
    d = 2 if bidirectional else 1
    one = [(3, 12), (4, 12)] + ([(2, 12) if reset_after else (12,)] if bias else [])
    upper = [(4 * d, 12), (4, 12), *one[2:]]
    assert [[a.shape for a in layer] for layer in layers] == [one * d, upper * d]
    assert all(a.dtype == np.float32 for layer in layers for a in layer)


def test_keras_gate_order_and_transpose() -> None:
    gru = GRU(2, 3)
    kernel, recurrent, bias = to_keras_weights(gru)[0]
    w_r, w_z, w_n = _np(gru.weight_ih_l0).reshape(3, 3, 2)
    np.testing.assert_array_equal(kernel, np.concatenate([w_z, w_r, w_n]).T)  # Keras (z, r, h), (I, 3H)
    u_r, u_z, u_n = _np(gru.weight_hh_l0).reshape(3, 3, 3)
    np.testing.assert_array_equal(recurrent, np.concatenate([u_z, u_r, u_n]).T)
    b_r, b_z, b_n = _np(gru.bias_hh_l0).reshape(3, 3)
    np.testing.assert_array_equal(bias[1], np.concatenate([b_z, b_r, b_n]))


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_round_trip_grukit_keras_grukit_exact(bias: bool, bidirectional: bool, num_layers: int) -> None:
    gru = GRU(5, 4, num_layers, bias=bias, batch_first=True, bidirectional=bidirectional)
    back = from_keras_weights(to_keras_weights(gru), bidirectional=bidirectional)
    assert (back.input_size, back.hidden_size, back.num_layers, back.bias) == (5, 4, num_layers, bias)
    assert back.batch_first and back.reset_after and back.bidirectional == bidirectional
    assert back.state_dict().keys() == gru.state_dict().keys()
    for name, value in gru.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


@pytest.mark.parametrize("bidirectional", [False, True])
def test_round_trip_reset_before_folds_bias(bidirectional: bool) -> None:
    """Keras reset_after=False has one bias: b_ih + b_hh on export, (b, 0) on import; same function."""
    gru = GRU(3, 4, 2, batch_first=True, bidirectional=bidirectional, reset_after=False)
    back = from_keras_weights(to_keras_weights(gru), reset_after=False, bidirectional=bidirectional)
    assert not back.reset_after
    for name, value in gru.state_dict().items():
        restored = back.state_dict()[name]
        if name.startswith("bias_ih"):
            expected = value + gru.state_dict()[name.replace("bias_ih", "bias_hh")]
            assert torch.equal(restored, expected), name
        elif name.startswith("bias_hh"):
            assert torch.equal(restored, torch.zeros_like(value)), name
        else:
            assert torch.equal(restored, value), name
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    for ours, theirs in zip(_eval(gru, x), _eval(back, x), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_round_trip_keras_grukit_keras_exact(reset_after: bool, bidirectional: bool) -> None:
    rng = np.random.default_rng(1)
    d = 2 if bidirectional else 1
    bias_shape = (2, 9) if reset_after else (9,)
    layers = [
        [rng.standard_normal(s).astype(np.float32) for s in [(2, 9), (3, 9), bias_shape] * d],
        [rng.standard_normal(s).astype(np.float32) for s in [(3 * d, 9), (3, 9), bias_shape] * d],
    ]
    back = to_keras_weights(from_keras_weights(layers, reset_after=reset_after, bidirectional=bidirectional))
    for layer, restored in zip(layers, back, strict=True):
        for a, b in zip(layer, restored, strict=True):
            np.testing.assert_array_equal(a, b)


def test_from_keras_weights_dtype_and_kwargs() -> None:
    gru64 = GRU(2, 3, dtype=torch.float64)
    back = from_keras_weights(to_keras_weights(gru64), batch_first=False, recurrent_dropout=0.25)
    assert back.weight_ih_l0.dtype == torch.float64 and not back.batch_first and back.recurrent_dropout == 0.25
    assert torch.equal(back.weight_hh_l0, gru64.weight_hh_l0)
    assert from_keras_weights(to_keras_weights(gru64), dtype=torch.float32).weight_ih_l0.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ errors


def test_reset_after_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"reset_after=False.*b_ih \+ b_hh.*reset_after=True"):
        to_keras_weights(GRU(2, 3), reset_after=False)
    with pytest.raises(ValueError, match="reset_after=True"):
        to_keras_weights(GRU(2, 3, reset_after=False), reset_after=True)
    assert len(to_keras_weights(GRU(2, 3, reset_after=False), reset_after=False)[0]) == 3


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"layer_norm": True}, "layer_norm"), ({"zoneout": 0.1}, "zoneout"), ({"learn_init": True}, "learn_init")],
)
def test_inexpressible_extensions_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        to_keras_weights(GRU(2, 3, **kwargs))


def test_training_only_extensions_export() -> None:
    gru = GRU(2, 3, num_layers=2, dropout=0.5, recurrent_dropout=0.3, dropconnect=0.2)
    assert len(to_keras_weights(gru)) == 2


def test_from_keras_weights_bad_inputs() -> None:
    good = to_keras_weights(GRU(2, 3))
    with pytest.raises(TypeError, match=r"\[layer.get_weights\(\)\]"):
        from_keras_weights(good[0])
    with pytest.raises(ValueError, match="belongs to reset_after=True"):
        from_keras_weights(good, reset_after=False)
    with pytest.raises(ValueError, match="6 \\(or 4 without bias\\)"):
        from_keras_weights(good, bidirectional=True)
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        from_keras_weights([[good[0][0], good[0][1][:, :6], good[0][2]]])
    with pytest.raises(ValueError, match="hidden_size is fixed"):
        from_keras_weights(good, hidden_size=5)
    with pytest.raises(TypeError):
        to_keras_weights(torch.nn.GRU(2, 3))


# ---------------------------------------------------------------------------------- against real Keras


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_single_layer_matches_keras(keras, reset_after: bool, bias: bool) -> None:
    torch.manual_seed(0)
    gru = GRU(5, 6, batch_first=True, bias=bias, reset_after=reset_after)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    h0 = rng.standard_normal((1, 3, 6)).astype(np.float32)
    layer = _keras_gru(keras, 6, reset_after, use_bias=bias)
    _run(layer, x)  # build
    layer.set_weights(to_keras_weights(gru)[0])
    y, h = _run(layer, x)
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(y, ours_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(h, ours_h[0], atol=ATOL, rtol=0)
    y, h = _run(layer, x, initial_state=[h0[0]])
    ours_y, ours_h = _eval(gru, x, h0)
    np.testing.assert_allclose(y, ours_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(h, ours_h[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
def test_two_stacked_layers_match_keras(keras, reset_after: bool) -> None:
    torch.manual_seed(1)
    gru = GRU(4, 5, num_layers=2, batch_first=True, reset_after=reset_after)
    x = np.random.default_rng(1).standard_normal((2, 9, 4)).astype(np.float32)
    first, second = _keras_gru(keras, 5, reset_after), _keras_gru(keras, 5, reset_after)
    y1, _ = _run(first, x)
    _run(second, y1)
    for layer, weights in zip((first, second), to_keras_weights(gru), strict=True):
        layer.set_weights(weights)
    y1, h1 = _run(first, x)
    y2, h2 = _run(second, y1)
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(y2, ours_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack([h1, h2]), ours_h, atol=ATOL, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_bidirectional_matches_keras(keras, reset_after: bool, num_layers: int) -> None:
    torch.manual_seed(2)
    gru = GRU(3, 4, num_layers=num_layers, batch_first=True, bidirectional=True, reset_after=reset_after)
    x = np.random.default_rng(2).standard_normal((2, 6, 3)).astype(np.float32)
    stack = [
        keras.layers.Bidirectional(_keras_gru(keras, 4, reset_after), merge_mode="concat") for _ in range(num_layers)
    ]
    inputs = x
    for layer in stack:
        inputs = _run(layer, inputs)[0]
    for layer, weights in zip(stack, to_keras_weights(gru), strict=True):
        layer.set_weights(weights)
    inputs, states = x, []
    for layer in stack:
        inputs, h_forward, h_backward = _run(layer, inputs)
        states += [h_forward, h_backward]
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(inputs, ours_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack(states), ours_h, atol=ATOL, rtol=0)


def test_keras_backward_layer_returns_reversed_time_order(keras) -> None:
    """The finding documented in grukit.interop.keras: Bidirectional's backward layer (go_backwards=True)
    returns its sequence in processing order (reversed in time); Bidirectional flips it back before
    concatenating, so the merged output matches grukit's input time order."""
    torch.manual_seed(3)
    gru = GRU(3, 4, batch_first=True, bidirectional=True)
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    bidi = keras.layers.Bidirectional(_keras_gru(keras, 4, True), merge_mode="concat")
    _run(bidi, x)
    bidi.set_weights(to_keras_weights(gru)[0])
    y_backward, h_backward = _run(bidi.backward_layer, x)
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(y_backward[:, ::-1], ours_y[..., 4:], atol=ATOL, rtol=0)
    assert np.abs(y_backward - ours_y[..., 4:]).max() > 1e-2  # not in input time order
    np.testing.assert_allclose(h_backward, ours_h[1], atol=ATOL, rtol=0)


def test_reverse_matches_keras_go_backwards(keras) -> None:
    torch.manual_seed(4)
    gru = GRU(3, 4, batch_first=True, reverse=True)
    x = np.random.default_rng(4).standard_normal((2, 6, 3)).astype(np.float32)
    layer = _keras_gru(keras, 4, True, go_backwards=True)
    _run(layer, x)
    layer.set_weights(to_keras_weights(gru)[0])
    y, h = _run(layer, x)
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(y[:, ::-1], ours_y, atol=ATOL, rtol=0)  # Keras: processing order
    np.testing.assert_allclose(h, ours_h[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_import_keras_weights_matches_keras(keras, reset_after: bool, bidirectional: bool) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 4)).astype(np.float32)
    layer = _keras_gru(keras, 5, reset_after)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, merge_mode="concat")
    _run(layer, x)
    # Keras initialises biases to zero: give every array random values so each one is exercised.
    layer.set_weights([(0.4 * rng.standard_normal(w.shape)).astype(np.float32) for w in layer.get_weights()])
    expected = _run(layer, x)
    gru = from_keras_weights([layer.get_weights()], reset_after=reset_after, bidirectional=bidirectional)
    ours_y, ours_h = _eval(gru, x)
    np.testing.assert_allclose(expected[0], ours_y, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack(expected[1:]), ours_h, atol=ATOL, rtol=0)
