"""grukit.GRUCell against torch.nn.GRUCell, and its extensions against grukit.GRU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

import grukit
from tests.nn.parametrized import doubled_twins


@given(
    batch=st.integers(1, 5),
    sizes=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    bias=st.booleans(),
    unbatched=st.booleans(),
    with_h=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_cell_matches_torch(batch, sizes, bias, unbatched, with_h, dtype):
    reference = torch.nn.GRUCell(*sizes, bias=bias, dtype=dtype)
    ours = grukit.GRUCell(*sizes, bias=bias, dtype=dtype)
    ours.load_state_dict(reference.state_dict(), strict=True)
    shape = (sizes[0],) if unbatched else (batch, sizes[0])
    x = torch.randn(shape, dtype=dtype)
    h = torch.randn((*shape[:-1], sizes[1]), dtype=dtype) if with_h else None
    results = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_()
        out = module(xi, h)
        out.sin().sum().backward()
        results.append([out, xi.grad, *[p.grad for p in module.parameters()]])
    tol = 1e-6 if dtype == torch.float32 else 1e-10
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("reset_after,layer_norm", [(False, False), (True, True), (False, True)])
def test_cell_extensions_equal_one_gru_step(reset_after, layer_norm):
    torch.manual_seed(0)
    cell = grukit.GRUCell(3, 4, reset_after=reset_after, layer_norm=layer_norm, dtype=torch.float64)
    gru = grukit.GRU(3, 4, reset_after=reset_after, layer_norm=layer_norm, dtype=torch.float64)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.add_(torch.randn_like(p) * 0.3)
            getattr(
                gru,
                name.replace("weight_ih", "weight_ih_l0")
                .replace("weight_hh", "weight_hh_l0")
                .replace("bias_ih", "bias_ih_l0")
                .replace("bias_hh", "bias_hh_l0")
                + ("_l0" if name.startswith("ln_") else ""),
            ).copy_(p)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(cell(x, h), gru(x.unsqueeze(0), h.unsqueeze(0))[1][0], atol=1e-12, rtol=0)
    x.requires_grad_()
    h.requires_grad_()
    assert gradcheck(cell, (x, h))


def test_cell_initialisation_matches_torch():
    torch.manual_seed(3)
    ours = grukit.GRUCell(4, 5)
    torch.manual_seed(3)
    reference = torch.nn.GRUCell(4, 5)
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert repr(ours) == repr(reference)


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"reset_after": False}, {"layer_norm": True}])
def test_eval_calls_without_autograd_match_the_layer_path(unbatched, kwargs, monkeypatch):
    """Eval under no_grad runs the backend's fused stepper where it has one (the cpu backend), bound once: the same
    numbers as the layer path, rebound after an in-place weight update or a replaced parameter."""
    monkeypatch.delenv(grukit.backends.dispatch.ENV_VAR, raising=False)
    torch.manual_seed(0)
    cell = grukit.GRUCell(5, 7, **kwargs).eval()
    x = torch.randn(5) if unbatched else torch.randn(3, 5)
    h = torch.randn(7) if unbatched else torch.randn(3, 7)

    def layer_path() -> torch.Tensor:
        with grukit.backends.dispatch.force("reference"), torch.no_grad():
            return cell(x, h)

    with torch.no_grad():
        got, no_state = cell(x, h), cell(x)
    fused = cell._stepper is not None and cell._stepper[2] is not None
    assert fused == (
        grukit.backends.dispatch.gru_backend(x.new_empty(1, 1, 5), grukit.backends.GRUConfig(), None).name == "cpu"
    )
    torch.testing.assert_close(got, layer_path(), atol=1e-6, rtol=0)
    with grukit.backends.dispatch.force("reference"), torch.no_grad():
        torch.testing.assert_close(no_state, cell(x), atol=1e-6, rtol=0)
    with torch.no_grad():
        cell.weight_hh.mul_(-1.5)  # in place: the bound weights are stale
        torch.testing.assert_close(cell(x, h), layer_path(), atol=1e-6, rtol=0)
    cell.weight_ih = torch.nn.Parameter(torch.randn(21, 5))  # replaced
    with torch.no_grad():
        torch.testing.assert_close(cell(x, h), layer_path(), atol=1e-6, rtol=0)


def test_eval_with_autograd_and_training_keep_the_layer_path():
    """Gradients still flow in eval mode with grad enabled, and training never uses the bound stepper."""
    torch.manual_seed(1)
    cell = grukit.GRUCell(4, 6).eval()
    x = torch.randn(2, 4, requires_grad=True)
    cell(x).sum().backward()
    assert x.grad is not None and cell.weight_hh.grad is not None
    cell.train()
    with torch.no_grad():
        cell(x)
    assert cell._stepper is None


def test_a_used_cell_copies_and_pickles():
    import copy
    import pickle

    cell = grukit.GRUCell(4, 6).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = cell(x)
        for clone in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))):
            torch.testing.assert_close(clone(x), expected, atol=0, rtol=0)


def test_a_parametrized_weight_reaches_the_step():
    """Weights that live outside the module's own parameters (torch.nn.utils.parametrize) are read through getattr:
    a training step with W_hh scaled by a parametrization equals a plain cell holding the scaled weight."""

    torch.manual_seed(0)
    wrapped, plain = doubled_twins(lambda: grukit.GRUCell(3, 4), "weight_hh")
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    torch.testing.assert_close(wrapped(x, h), plain(x, h), atol=1e-6, rtol=1e-6)
    wrapped.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, h), plain(x, h), atol=1e-6, rtol=1e-6)
