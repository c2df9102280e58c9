"""The cpu stepper's recycled outputs (OutputPool in gru_cpu.cpp): a later step may write its result into a tensor
the caller dropped, and nothing the caller can still reach ever changes."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import pytest
import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

import grukit
from grukit.backends import dispatch
from grukit.backends.cpu import load_extension

H = 5


@pytest.fixture(autouse=True)
def cpu_backend(monkeypatch):
    load_extension()
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")


def _steppers():
    """Two steppers of one model: the one under test and a twin whose outputs are never dropped (the expected
    values)."""
    torch.manual_seed(0)
    gru = grukit.GRU(3, H, num_layers=2).eval()
    return gru.stepper(), gru.stepper()


# Each observer keeps a way to see a tensor (its memory, its object or its autograd use) and returns a function
# giving what it sees now, with the function of the tensor's values that it should equal.
def _view(t):
    v = t.view(-1)
    return lambda: v, lambda c: c.view(-1)


def _numpy(t):
    a = t.numpy()
    return lambda: torch.from_numpy(a), lambda c: c


def _storage(t):
    s, shape = t.untyped_storage(), t.shape
    return lambda: torch.tensor([]).set_(s).view(shape), lambda c: c


def _weak(t):
    w = weakref.ref(t)
    return w, lambda c: c  # None once the object is gone: then nothing can see it


def _dlpack(t):
    capsule = to_dlpack(t)
    return lambda: from_dlpack(capsule), lambda c: c


def _saved_by_autograd(t):
    w = torch.ones(t.shape[-1], requires_grad=True)
    with torch.enable_grad():
        total = (t * w).sum()  # saves t for the gradient of w
    return lambda: torch.autograd.grad(total, w, retain_graph=True)[0], lambda c: c.reshape(-1, c.shape[-1]).sum(0)


OBSERVERS: dict[str, Callable] = {
    "view": _view,
    "numpy": _numpy,
    "storage": _storage,
    "weakref": _weak,
    "dlpack": _dlpack,
    "saved by autograd": _saved_by_autograd,
}


@pytest.mark.parametrize("observer", OBSERVERS)
@pytest.mark.parametrize("role", [0, 1])  # 0: y, 1: the state
def test_a_dropped_output_still_observed_is_never_written_again(observer, role):
    stepper, _ = _steppers()
    xs, h = torch.randn(8, 4, 3), torch.randn(2, 4, H)
    result = stepper.step(xs[0], h)
    copy = result[role].clone()
    see, expected = OBSERVERS[observer](result[role])
    del result  # the caller's names are gone; the observer still reaches the tensor
    state = h
    for x_t in xs[1:]:
        _, state = stepper.step(x_t, state)
    seen = see()
    if seen is not None:
        torch.testing.assert_close(seen, expected(copy), atol=0, rtol=0)


def test_outputs_stay_right_when_some_are_kept_and_others_dropped():
    """A decoder keeps every y and the last state; a second stepper that keeps everything gives the same values."""
    stepper, twin = _steppers()
    xs = torch.randn(12, 2, 3)
    kept, state, twin_state, twin_ys = [], None, None, []
    for i, x_t in enumerate(xs):
        y, state = stepper.step(x_t, state)
        if i % 3:  # drop every third y at once: its object may come back for a later step
            kept.append((i, y))
        ty, twin_state = twin.step(x_t, twin_state)
        twin_ys.append(ty.clone())
    for i, y in kept:
        torch.testing.assert_close(y, twin_ys[i], atol=0, rtol=0)
    torch.testing.assert_close(state, twin_state, atol=0, rtol=0)


def test_a_recycled_output_carries_nothing_of_its_past():
    """An attribute set on a dropped output, or requires_grad, keeps that object out of later results."""
    stepper, _ = _steppers()
    x, h = torch.randn(4, 3), torch.randn(2, 4, H)
    y, state = stepper.step(x, h)
    y.tag = "mine"
    state.requires_grad_()
    del y, state
    for _ in range(4):
        y, state = stepper.step(x, h)
        assert not hasattr(y, "tag") and not state.requires_grad


def test_a_dropped_output_comes_back_as_the_next_result():
    """The point of the pool: in a loop that drops its results, the next step reuses the same tensor objects (no
    allocation); while the caller holds one, it is not reused."""
    stepper, _ = _steppers()
    x, h = torch.randn(4, 3), torch.randn(2, 4, H)
    y, _ = stepper.step(x, h)
    assert sys.getrefcount(y) == 3  # the name, getrefcount's argument and the pool's reference
    first = id(y)
    del y, _
    y, _state = stepper.step(x, h)
    assert id(y) == first  # the object stayed alive in the pool, so no other object can have its id
    again, _ = stepper.step(x, h)
    assert again is not y  # y is still held here
    torch.testing.assert_close(again, y, atol=0, rtol=0)


def test_large_outputs_are_not_kept():
    stepper, _ = _steppers()
    y, _ = stepper.step(torch.randn(4000, 3))  # y: 80 KB, above the pool's 64 KiB
    assert sys.getrefcount(y) == 2
