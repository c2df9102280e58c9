"""Streaming: ``step`` and ``stream`` concatenate to exactly one forward pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import grukit
from grukit.backends import dispatch
from grukit.nn.streaming import StaleStepperError


@given(
    cuts=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    layers=st.integers(1, 3),
    batch_first=st.booleans(),
    reset_after=st.booleans(),
    layer_norm=st.booleans(),
    learn_init=st.booleans(),
    zoneout=st.sampled_from([0.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_chunks_of_any_length_concatenate_to_one_pass(
    cuts, layers, batch_first, reset_after, layer_norm, learn_init, zoneout, seed
):
    torch.manual_seed(seed)
    gru = grukit.GRU(
        3,
        4,
        layers,
        batch_first=batch_first,
        reset_after=reset_after,
        layer_norm=layer_norm,
        learn_init=learn_init,
        zoneout=zoneout,
        dtype=torch.float64,
    ).eval()
    if learn_init:
        with torch.no_grad():
            gru.initial_state.normal_()
    steps = sum(cuts)
    time_dim = 1 if batch_first else 0
    x = torch.randn((2, steps, 3) if batch_first else (steps, 2, 3), dtype=torch.float64)
    full, full_h = gru(x)
    stream = gru.stream()
    pieces = [stream(chunk)[0] for chunk in x.split(cuts, dim=time_dim)]
    # float64: chunked GEMMs round differently from one big GEMM, so float32 agrees only to a few ulp
    torch.testing.assert_close(torch.cat(pieces, time_dim), full, atol=1e-12, rtol=0)
    torch.testing.assert_close(stream.state, full_h, atol=1e-12, rtol=0)


def test_step_by_step_equals_forward_batched_and_unbatched():
    torch.manual_seed(0)
    gru = grukit.GRU(3, 5, num_layers=2, batch_first=True)
    x = torch.randn(2, 7, 3)
    full, full_h = gru(x)
    state, outputs = None, []
    for t in range(7):
        y, state = gru.step(x[:, t], state)
        outputs.append(y)
    torch.testing.assert_close(torch.stack(outputs, 1), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(state, full_h, atol=1e-6, rtol=0)
    state = None
    for t in range(7):
        y, state = gru.step(x[0, t], state)
    assert y.shape == (5,) and state.shape == (2, 5)
    torch.testing.assert_close(y, full[0, -1], atol=1e-6, rtol=0)


def test_stream_reset_and_initial_state():
    gru = grukit.GRU(2, 3)
    x = torch.randn(4, 1, 2)
    h0 = torch.randn(1, 1, 3)
    stream = gru.stream(h0)
    first, _ = stream(x)
    torch.testing.assert_close(first, gru(x, h0)[0])
    stream.reset()
    torch.testing.assert_close(stream(x)[0], gru(x)[0])


@pytest.mark.parametrize("kwargs", [{"bidirectional": True}, {"reverse": True}])
def test_streaming_refuses_backward_directions(kwargs):
    gru = grukit.GRU(2, 3, **kwargs)
    with pytest.raises(RuntimeError, match="forward-only"):
        gru.step(torch.randn(1, 2))


# ----------------------------------------------------------------------------------------- the stepper handle


def _reference_steps(gru, xs, state, monkeypatch):
    """(ys, final state) of gru.step on the reference backend. xs: (T, B, I) or (T, I)."""
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    ys = []
    with torch.no_grad():
        for x_t in xs:
            y_t, state = gru.step(x_t, state)
            ys.append(y_t)
    monkeypatch.delenv(dispatch.ENV_VAR)
    return torch.stack(ys), state


def test_without_a_fused_stepper_each_step_runs_the_module(monkeypatch):
    """A backend with no fused stepper (here the reference): each step is ``gru.step`` under no_grad."""
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    torch.manual_seed(0)
    gru = grukit.GRU(5, 13, num_layers=2, layer_norm=True, zoneout=0.3).eval()
    xs = torch.randn(6, 3, 5)
    stepper = gru.stepper()
    assert stepper._fused is None
    with torch.no_grad():
        expected, expected_state = gru(xs)
    torch.testing.assert_close(torch.stack([stepper(x_t) for x_t in xs]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(stepper.state, expected_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_layers": 3},
        {"num_layers": 2, "bias": False, "learn_init": True},
        {"reset_after": False, "num_layers": 2},  # the fused kernel's two-phase form
        {"layer_norm": True, "zoneout": 0.3},  # the fused stepper's layer-norm layers, zoneout's expectation
    ],
)
@pytest.mark.parametrize("batched", [True, False])
def test_stepper_matches_the_reference_steps(dtype, atol, kwargs, batched, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)  # the default backend (cpu where it builds)
    torch.manual_seed(0)
    gru = grukit.GRU(5, 13, dtype=dtype, **kwargs).eval()
    if gru.learn_init:
        with torch.no_grad():
            gru.initial_state.normal_()
    xs = torch.randn((6, 3, 5) if batched else (6, 5), dtype=dtype)
    expected, expected_state = _reference_steps(gru, xs, None, monkeypatch)
    stepper = gru.stepper()
    functional, state = [], None
    for x_t in xs:
        y_t, state = stepper.step(x_t, state)
        functional.append(y_t)
    torch.testing.assert_close(torch.stack(functional), expected, atol=atol, rtol=0)
    torch.testing.assert_close(state, expected_state, atol=atol, rtol=0)
    out = (torch.full_like(functional[0], float("nan")), torch.full_like(state, float("nan")))
    assert stepper.step(xs[0], None, out=out) is out  # in place, fused or not
    torch.testing.assert_close(out[0], functional[0], atol=0, rtol=0)
    stateful = torch.stack([stepper(x_t) for x_t in xs])  # the state lives in the stepper
    torch.testing.assert_close(stateful, expected, atol=atol, rtol=0)
    torch.testing.assert_close(stepper.state, expected_state, atol=atol, rtol=0)
    stepper.reset(state)  # continue from a given state: the next steps equal steps 1.. from there
    more, _ = _reference_steps(gru, xs[:2], state, monkeypatch)
    torch.testing.assert_close(torch.stack([stepper(x_t) for x_t in xs[:2]]), more, atol=atol, rtol=0)


def _bump_in_place(gru):
    with torch.no_grad():
        gru.weight_hh_l0.add_(0.5)


def _bump_detached_view(gru):
    gru.bias_ih_l1.detach()[3:5].mul_(-2.0)  # a view of .detach() shares the version counter


def _load_state_dict(gru):
    gru.load_state_dict({k: v * 0.5 for k, v in gru.state_dict().items()})


def _optimizer_step(gru):
    optimizer = torch.optim.SGD(gru.parameters(), lr=0.5)
    gru.train()
    gru(torch.randn(3, 2, 4))[0].square().sum().backward()
    optimizer.step()
    gru.eval()


def _replace_parameter(gru):
    gru.weight_ih_l0 = torch.nn.Parameter(torch.randn(18, 4))


def _new_storage(gru):
    gru.weight_hh_l1.data = gru.weight_hh_l1.data * 2


@pytest.mark.parametrize(
    "change", [_bump_in_place, _bump_detached_view, _load_state_dict, _optimizer_step, _replace_parameter, _new_storage]
)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("state", [None, "given"])  # given: the cpu backend's guarded builtin checks, not Python
def test_stepper_raises_after_a_detectable_change_until_refreshed(change, reset_after, state, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    torch.manual_seed(0)
    gru = grukit.GRU(4, 6, num_layers=2, reset_after=reset_after).eval()
    x = torch.randn(2, 4)
    h = None if state is None else torch.zeros(2, 2, 6)
    stepper = gru.stepper()
    stepper.step(x, h)
    change(gru)
    with pytest.raises(StaleStepperError, match=r"call stepper\.refresh"):
        stepper.step(x, h)
    stepper.refresh()
    expected, _ = _reference_steps(gru, x[None], None, monkeypatch)
    torch.testing.assert_close(stepper.step(x, h)[0], expected[0], atol=1e-6, rtol=0)


def test_a_plain_cpu_step_runs_without_the_python_method(monkeypatch):
    """On the cpu backend stepper.step(x, state) is one builtin; the Python method serves only what it hands over
    (no state, out=, a change it must name)."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    calls = []
    method = grukit.nn.streaming.Stepper.step

    def counted(self, *args, **kwargs):
        calls.append(len(args) + len(kwargs))
        return method(self, *args, **kwargs)

    monkeypatch.setattr(grukit.nn.streaming.Stepper, "step", counted)
    gru = grukit.GRU(4, 6).eval()
    stepper = gru.stepper()  # binds after the patch: its fallback is the counted method
    x, h = torch.randn(2, 4), torch.zeros(1, 2, 6)
    y, state = stepper.step(x, h)
    assert calls == []
    out = (torch.empty(2, 6), torch.empty(1, 2, 6))
    assert stepper.step(x, h, out=out) is out and torch.equal(out[0], y) and torch.equal(out[1], state)
    stepper.step(x)
    assert calls == [3, 1]


def test_stepper_mode_and_shape_errors():
    gru = grukit.GRU(4, 6)
    with pytest.raises(RuntimeError, match=r"call \.eval"):
        gru.stepper()  # a new module is in training mode
    stepper = gru.eval().stepper()
    gru.train()
    with pytest.raises(StaleStepperError, match="training mode"):
        stepper(torch.randn(4))
    gru.eval()
    with pytest.raises(RuntimeError, match="forward-only"):
        grukit.GRU(4, 6, bidirectional=True).eval().stepper()
    with pytest.raises(RuntimeError, match="state"):
        stepper.step(torch.randn(2, 4), torch.zeros(1, 3, 6))  # batch 2 against a state of batch 3


def test_stepper_serves_mingru_through_its_step():
    torch.manual_seed(0)
    model = grukit.MinGRU(3, 5, num_layers=2).eval()
    xs = torch.randn(4, 2, 3)
    with torch.no_grad():
        expected = model(xs)
    stepper = model.stepper()
    ys = torch.stack([stepper(x_t) for x_t in xs])
    torch.testing.assert_close(ys, expected[0], atol=1e-5, rtol=0)
