"""The cpu backend's whole-stack eval call (``ext.stack``) and the native guard that serves repeated eval calls.

An eval call that records no autograd runs every layer and direction in one C++ call; after one such call the
module holds ``_fast_forward``, a builtin that serves the next calls without the Python path when nothing it depends
on changed. These tests hold it to the reference and show that every change it must notice sends the call back to
the Python path (which then rebuilds the guard or declines).
"""

from __future__ import annotations

import copy
import io
import os
import shutil

import pytest
import torch

import grukit
from grukit.backends import dispatch

if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: the cpu backend cannot be built here", allow_module_level=True)

from grukit.backends.cpu import PACK_CACHE, load_extension


@pytest.fixture(scope="module", autouse=True)
def extension():
    return load_extension()


@pytest.fixture(autouse=True)
def default_dispatch(monkeypatch):
    """The default dispatch (no backend forced): the only one the guard serves."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def _reference(gru: grukit.GRU, *args) -> tuple[torch.Tensor, torch.Tensor]:
    with dispatch.force("reference"), torch.no_grad():
        return gru(*args)


def _python_path_forbidden(gru: grukit.GRU, monkeypatch) -> None:
    """Make the Python path raise, so only the native guard can answer."""

    def refuse(*args, **kwargs):
        raise AssertionError("the call took the Python path")

    monkeypatch.setattr(gru, "_forward_stack", refuse)
    monkeypatch.setattr(gru, "_forward_time_major", refuse)


CASES = [
    {},
    {"num_layers": 3},
    {"bidirectional": True},
    {"num_layers": 2, "bidirectional": True, "bias": False},
    {"reverse": True},
    {"reset_after": False, "num_layers": 2},
    {"batch_first": True, "num_layers": 2},
    {"learn_init": True, "num_layers": 2},
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("steps, batch", [(7, 3), (1, 1), (1, 9)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_the_guard_serves_eval_calls_like_the_reference(kwargs, dtype, atol, steps, batch, with_hx, monkeypatch):
    torch.manual_seed(steps * 10 + batch)
    gru = grukit.GRU(5, 6, dtype=dtype, **kwargs).eval()
    if gru.learn_init:
        torch.nn.init.normal_(gru.initial_state)
    shape = (batch, steps, 5) if gru.batch_first else (steps, batch, 5)
    x = torch.randn(shape, dtype=dtype)
    args = (x, torch.randn(gru.num_layers * gru._directions, batch, 6, dtype=dtype)) if with_hx else (x,)
    expected = _reference(gru, *args)
    with torch.no_grad():
        first = gru(*args)  # the Python path, which builds the guard
    assert gru._fast_forward is not None
    _python_path_forbidden(gru, monkeypatch)
    with torch.no_grad():
        second = gru(*args)
    for got in (first, second):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=0)
            assert a.shape == b.shape


def test_unbatched_input_through_the_guard(monkeypatch):
    torch.manual_seed(0)
    gru = grukit.GRU(4, 5, num_layers=2).eval()
    x, h = torch.randn(6, 4), torch.randn(2, 5)
    expected = _reference(gru, x, h)
    with torch.no_grad():
        gru(x, h)
    _python_path_forbidden(gru, monkeypatch)
    with torch.no_grad():
        got = gru(x, h)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        assert a.shape == b.shape


class _Subclass(torch.Tensor):
    pass


def _guarded(gru: grukit.GRU, x: torch.Tensor, *rest) -> bool:
    """Whether the guard alone serves gru(x, *rest) under no_grad (None: it hands the call to the Python path)."""
    with torch.no_grad():
        gru(x, *rest)
        return gru._fast_forward(gru, x, rest[0] if rest else None) is not None


def test_an_in_place_weight_change_is_computed_not_cached():
    torch.manual_seed(1)
    gru, x = grukit.GRU(4, 5).eval(), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    with torch.no_grad():
        gru.weight_hh_l0.mul_(-2.0)
        got = gru(x)
    for a, b in zip(got, _reference(gru, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_replaced_parameter_sends_the_call_to_the_python_path_which_rebuilds_the_guard():
    torch.manual_seed(2)
    gru, x = grukit.GRU(4, 5).eval(), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    old = gru._fast_forward
    gru.weight_ih_l0 = torch.nn.Parameter(torch.randn(15, 4))
    assert old(gru, x, None) is None
    with torch.no_grad():
        got = gru(x)
    assert gru._fast_forward is not old
    for a, b in zip(got, _reference(gru, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("setting, value", [("zoneout", 0.3), ("reset_after", False), ("batch_first", True)])
def test_a_changed_setting_drops_the_guard(setting, value):
    """The guard assumed the module's settings when it was built: assigning one (gru.zoneout = 0.3) drops it, and
    the next calls follow the new setting."""
    torch.manual_seed(4)
    gru, x = grukit.GRU(4, 5).eval(), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    setattr(gru, setting, value)
    assert gru._fast_forward is None
    with torch.no_grad():
        got = gru(x)
    for a, b in zip(got, _reference(gru, x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "change",
    ["train", "grad", "input_grad", "forced", "pack_cache", "register", "autocast", "dtype", "width", "hx", "subclass"],
)
def test_what_the_guard_declines(change, monkeypatch):
    """Each change that the Python path decides on makes the guard answer None."""
    torch.manual_seed(3)
    gru, x = grukit.GRU(4, 5).eval(), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    hx = None
    if change == "train":
        gru.train()
    elif change == "input_grad":
        gru.requires_grad_(False)
        x.requires_grad_()
    elif change == "forced":
        monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    elif change == "pack_cache":
        monkeypatch.setattr(PACK_CACHE, "capacity", 4)
    elif change == "register":
        dispatch.register("cpu", dispatch._loaders["cpu"][1], dispatch._loaders["cpu"][0])  # as a plug-in would
    elif change == "dtype":
        x = x.double()
    elif change == "width":
        x = torch.randn(3, 2, 7)
    elif change == "hx":
        hx = torch.zeros(1, 3, 5)
    elif change == "subclass":
        x = x.as_subclass(_Subclass)  # its __torch_function__ must see the call: the Python path
    if change in ("grad", "input_grad"):
        assert gru._fast_forward(gru, x, hx) is None  # grad mode on and a tensor that requires grad
    elif change == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert gru._fast_forward(gru, x, hx) is None
    else:
        with torch.no_grad():
            assert gru._fast_forward(gru, x, hx) is None


def test_bad_input_still_gets_the_python_paths_errors():
    gru = grukit.GRU(4, 5).eval()
    with torch.no_grad():
        gru(torch.randn(3, 2, 4))
        with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size"):
            gru(torch.randn(3, 2, 7))
        with pytest.raises(ValueError, match="does not match weight dtype"):
            gru(torch.randn(3, 2, 4, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="Expected hidden size"):
            gru(torch.randn(3, 2, 4), torch.zeros(1, 3, 5))


def test_a_frozen_module_is_served_with_grad_mode_on():
    """requires_grad_(False) (a frozen encoder): nothing to record, so the guard serves even outside no_grad."""
    gru, x = grukit.GRU(4, 5).eval().requires_grad_(False), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    assert gru._fast_forward(gru, x, None) is not None


def test_eval_without_no_grad_still_records_autograd():
    gru = grukit.GRU(4, 5).eval()
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        gru(x)
    y, _ = gru(x)
    assert y.grad_fn is not None
    y.sum().backward()
    assert gru.weight_hh_l0.grad is not None


def test_a_copy_and_a_pickled_module_use_their_own_weights():
    torch.manual_seed(4)
    gru, x = grukit.GRU(4, 5).eval(), torch.randn(3, 2, 4)
    assert _guarded(gru, x)
    twin = copy.deepcopy(gru)
    buffer = io.BytesIO()
    torch.save(gru, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert twin._fast_forward is None and loaded._fast_forward is None
    with torch.no_grad():
        for other in (twin, loaded):
            other.weight_hh_l0.zero_()
            got = other(x)
            for a, b in zip(got, _reference(other, x), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert not torch.equal(gru(x)[0], twin(x)[0])  # the original kept its weights
