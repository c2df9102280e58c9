"""The Triton GRU backward through time under the Triton interpreter: it runs in the Triton kernels (never the
reference), on both paths, with every gradient held to the reference backend's autograd; float16 and bfloat16."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: triton.jit reads it when kernels are defined

import pytest

pytest.importorskip("triton")

import torch

import grukit
from grukit.backends import dispatch, reference
from grukit.backends.triton import backend as triton_backend
from grukit.backends.triton import configs
from tests.backends.triton_helpers import max_diff, run

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(configs.PATH_ENV, raising=False)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


@pytest.fixture
def launches(monkeypatch):
    """Names of the kernels launched, in order; the reference's layer raises if anything calls it."""
    names: list[str] = []
    launch = triton_backend._launch

    def spy(config, grid, *args):
        names.append(config.kernel)
        launch(config, grid, *args)

    def no_reference(*args, **kwargs):
        raise AssertionError("the Triton backend called the reference backend")

    monkeypatch.setattr(triton_backend, "_launch", spy)
    monkeypatch.setattr(reference, "gru_layer", no_reference)
    return names


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("path", configs.PATHS)
def test_backward_runs_in_triton_kernels(monkeypatch, launches, path, reset_after):
    """T = 3 steps: one persistent backward launch, or T + 1 fused per-step launches (plus T reset-gate launches
    for reset_after=False), and no reference call on the way."""
    torch.manual_seed(0)
    gru = grukit.GRU(2, 8, reset_after=reset_after)
    run(gru, "triton", monkeypatch, torch.randn(3, 1, 2), path=path)
    backward = [name for name in launches if "bwd" in name]
    if path == "persistent":
        assert backward == ["gru_persistent_bwd_kernel"]
    else:
        assert backward.count("gru_bwd_step_kernel") == 4
        assert backward.count("gru_bwd_reset_kernel") == (0 if reset_after else 3)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
def test_per_step_kernels_over_several_row_and_column_tiles(monkeypatch, reset_after):
    """B = 70 spans two row tiles of 64 and H = 40 two column tiles of 32 (float32), so the backward's carry through
    W_hh crosses programs; lengths include 0 and the full T. (Persistent programs own whole rows: the parity tests
    of test_triton_backend.py run those at B = 18, two programs.)"""
    torch.manual_seed(1)
    gru = grukit.GRU(3, 40, reset_after=reset_after)
    x = torch.randn(2, 70, 3)
    h0 = torch.randn(1, 70, 40)
    lengths = torch.arange(70) % 3
    got = run(gru, "triton", monkeypatch, x, h0, lengths, path="step")
    want = run(gru, "reference", monkeypatch, x, h0, lengths)
    assert max_diff(got, want) <= 1e-5


@pytest.mark.parametrize("path", configs.PATHS)
def test_loss_on_one_output_and_frozen_weights(monkeypatch, path):
    """A loss on h_n alone (no gradient reaches y) or on y alone (none reaches h_n), and weights that need no
    gradient: the backward still gives the reference's gradient of x and h0."""
    torch.manual_seed(2)
    gru = grukit.GRU(4, 12, reverse=True)
    for p in gru.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 3, 4)
    h0 = torch.randn(1, 3, 12)
    monkeypatch.setenv(configs.PATH_ENV, path)
    for pick in (0, 1):
        grads = []
        for backend in ("triton", "reference"):
            monkeypatch.setenv(dispatch.ENV_VAR, backend)
            xg, hg = x.clone().requires_grad_(), h0.clone().requires_grad_()
            out = gru(xg, hg)[pick]
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            grads.append([xg.grad, hg.grad])
        assert max_diff(*grads) <= 1e-5


def test_double_backward_raises(monkeypatch):
    """The kernels' backward is not itself differentiable: a graph of the gradient (for a second derivative) must
    fail loudly, not lose the terms that flow through the saved activations."""
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    gru = grukit.GRU(2, 4)
    x = torch.randn(3, 1, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"not differentiable.*GRUKIT_BACKEND=reference"):
        torch.autograd.grad(gru(x)[0].sum(), x, create_graph=True)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("path", configs.PATHS)
def test_float16_gradients_are_as_accurate_as_the_reference(monkeypatch, path, reset_after):
    """float16 against a float64 reference on the same (float16-representable) data. The kernels carry state and
    gradients in float32 and accumulate every dot in float32, but the recurrent dots take float16 operands (the
    state, and the gate gradients, rounded to 11 bits: relative 4.9e-4), and so do the weight-gradient GEMMs.
    Each gradient must stay within 1e-2 of its own scale, and within twice the error of the reference backend
    computing entirely in float16 (its autograd rounds every intermediate)."""
    torch.manual_seed(3)
    gru64 = grukit.GRU(5, 24, reset_after=reset_after, bidirectional=True).double()
    gru64.load_state_dict({k: v.half().double() for k, v in gru64.state_dict().items()})
    x = torch.randn(7, 4, 5, dtype=torch.float64).half().double()
    h0 = (0.5 * torch.randn(2, 4, 24, dtype=torch.float64)).half().double()
    lengths = torch.tensor([7, 4, 1, 6])
    exact = run(gru64, "reference", monkeypatch, x, h0, lengths)
    gru16 = grukit.GRU(5, 24, reset_after=reset_after, bidirectional=True, dtype=F16)
    gru16.load_state_dict(gru64.state_dict())
    got = run(gru16, "triton", monkeypatch, x.half(), h0.half(), lengths, path=path)
    ref16 = run(gru16, "reference", monkeypatch, x.half(), h0.half(), lengths)
    for g, e, r in zip(got[2:], exact[2:], ref16[2:], strict=True):
        assert g.dtype == F16
        scale = e.abs().max().item()
        error = (g.double() - e).abs().max().item()
        assert error <= 1e-2 * scale
        assert error <= 2 * (r.double() - e).abs().max().item() + 1e-3 * scale


@pytest.mark.parametrize("path", configs.PATHS)
def test_bfloat16_gradients_round_the_float32_ones(monkeypatch, path):
    """Under the interpreter bfloat16 runs in float32 (its bf16 tl.dot is wrong), so each gradient must be the
    float32 reference's on the same data up to bfloat16 roundings (8 bits: 3.9e-3 relative): of the result, and of
    the loss's gradients, which see y and h_n rounded to bfloat16 (so 1e-2 of each gradient's scale)."""
    torch.manual_seed(4)
    gru = grukit.GRU(4, 16, dtype=BF16, reset_after=False)
    gru32 = grukit.GRU(4, 16, reset_after=False)
    gru32.load_state_dict({k: v.float() for k, v in gru.state_dict().items()})
    x = torch.randn(5, 3, 4, dtype=BF16)
    h0 = torch.randn(1, 3, 16, dtype=BF16)
    got = run(gru, "triton", monkeypatch, x, h0, path=path)
    want = run(gru32, "reference", monkeypatch, x.float(), h0.float())
    for g, w in zip(got[2:], want[2:], strict=True):
        assert g.dtype == BF16
        assert (g.double() - w.double()).abs().max().item() <= 1e-2 * w.abs().max().item()
