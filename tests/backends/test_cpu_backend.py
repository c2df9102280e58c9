"""The fused C++ cpu backend: every supported configuration held to the reference, gradcheck, declines, build cache.

Each test runs the same module twice, once with GRUKIT_BACKEND=cpu and once with GRUKIT_BACKEND=reference, so
a silent fallback cannot pass for the kernel. Skipped (with the reason) only on a machine without a C++ compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

import grukit
from grukit.backends import dispatch, reference
from grukit.backends.contract import GRUConfig, GRUWeights

if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: the cpu backend cannot be built here", allow_module_level=True)

from grukit.backends.cpu import CpuBackend, load_extension
from grukit.backends.cpu.build import build_dir, flag_sets


@pytest.fixture(scope="module", autouse=True)
def extension():
    """Build (or load the cached) extension once for the module; a build failure fails loudly here."""
    return load_extension()


def _run(backend: str, gru: torch.nn.Module, x, h0, lengths, monkeypatch, seed: int = 0) -> list[torch.Tensor]:
    """Outputs, h_n and the gradients of x, h0 and every parameter under one forced backend (the random generator
    seeded first, so that both backends draw the same training masks)."""
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    torch.manual_seed(seed)
    xs = x.detach().clone().requires_grad_()
    hs = None if h0 is None else h0.detach().clone().requires_grad_()
    gru.zero_grad(set_to_none=True)
    y, h_n = gru(xs, hs, lengths=lengths)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # distinct weights: no cancelling
    ((y * weights).sum() + (h_n * h_n).sum()).backward()
    grads = [xs.grad] + ([] if hs is None else [hs.grad])
    grads += [p.grad if p.grad is not None else torch.zeros_like(p) for p in gru.parameters()]
    return [y.detach(), h_n.detach(), *grads]


def _assert_same(gru, x, h0, lengths, monkeypatch, atol=1e-5) -> None:
    """Every result within atol, plus 1e-6 of its size: a weight gradient sums T * B float32 terms in another order
    than the reference, a few ulps apart (hypothesis found 1.9e-5 on a gradient of 20, relative 9e-7)."""
    expected = _run("reference", gru, x, h0, lengths, monkeypatch)
    got = _run("cpu", gru, x, h0, lengths, monkeypatch)
    names = ["output", "h_n", "dx"] + (["dh0"] if h0 is not None else []) + [n for n, _ in gru.named_parameters()]
    for name, a, b in zip(names, expected, got, strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_float32_matches_the_reference(reset_after, bias, direction, use_lengths, monkeypatch):
    torch.manual_seed(0)
    gru = grukit.GRU(
        7,
        37,  # not a multiple of any vector width: exercises the tail lanes
        num_layers=2,
        bias=bias,
        bidirectional=direction == "bidirectional",
        reverse=direction == "reverse",
        reset_after=reset_after,
    )
    batch = 9  # one full row block plus a remainder on every ISA
    x = torch.randn(11, batch, 7)
    h0 = torch.randn(2 * (2 if direction == "bidirectional" else 1), batch, 37)
    lengths = torch.tensor([11, 3, 0, 7, 11, 1, 5, 10, 2]) if use_lengths else None
    _assert_same(gru, x, h0, lengths, monkeypatch)


@pytest.mark.parametrize("hidden", [64, 256])
@pytest.mark.parametrize("batch", [1, 8])
def test_float32_benchmark_sizes_match_the_reference(hidden, batch, monkeypatch):
    """The sizes the benchmark times, where every panel is full (no tail lanes)."""
    torch.manual_seed(0)
    gru = grukit.GRU(hidden, hidden)
    _assert_same(gru, torch.randn(16, batch, hidden), torch.randn(1, batch, hidden), None, monkeypatch)


@pytest.fixture
def projection(request, extension):
    """The input side's projection mode for one test (0: one GEMM, 2: the micro-kernel), then the default."""
    extension.set_projection_mode(request.param)
    yield request.param
    extension.set_projection_mode(1)


@pytest.mark.parametrize("projection", [0, 2], ids=["gemm", "micro-kernel"], indirect=True)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_input_side_before_the_loop_matches_the_reference(projection, reset_after, bias, monkeypatch):
    """W_ih of 703 KiB and 1.03 MiB at B < 8 (the loop fuses no projection): one GEMM, or the micro-kernel over all
    steps (the default on AMD CPUs at any size, elsewhere up to 256 KiB), projects every step before the loop into a
    buffer reused across calls (the second, shorter call must not see the first call's projections)."""
    torch.manual_seed(1)
    gru = grukit.GRU(200, 300, num_layers=2, bias=bias, reset_after=reset_after)  # W_ih: 703 KiB and 1.03 MiB
    for steps, lengths in ((6, None), (3, torch.tensor([3, 2]))):
        _assert_same(gru, torch.randn(steps, 2, 200), torch.randn(2, 2, 300), lengths, monkeypatch)


@pytest.mark.parametrize("projection", [0, 2], ids=["gemm", "micro-kernel"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_projection_over_several_chunks_of_rows_matches_the_reference(projection, dtype, monkeypatch):
    """305 rows (T * B) of a 512-wide input: the micro-kernel projects chunks of rows whose x fits 256 KiB (128 rows
    in float32, 64 in float64, on AVX2 and AVX-512 alike) with every panel over one chunk before the next; the last
    chunk ends in a row block narrower than the widest. W_ih's float32 gradient (up to 31, 305 rows summed) sits
    1.5e-5 (the reference) to 2e-5 (this backend, either projection) from the float64 result: atol 5e-5 there."""
    torch.manual_seed(2)
    gru = grukit.GRU(512, 40).to(dtype)
    atol = 5e-5 if dtype == torch.float32 else 1e-5
    _assert_same(gru, torch.randn(61, 5, 512, dtype=dtype), None, None, monkeypatch, atol=atol)


@pytest.mark.parametrize("reset_after", [True, False])
def test_wide_layers_fetching_panels_ahead_match_the_reference(reset_after, monkeypatch):
    """H = 384: W_hh of 1.7 MiB (past a 512 KiB or 1 MiB L2) in panels over 32 KiB, so forward_loop fetches each next
    panel while the current one's row blocks run (PanelAhead); B = 9: full row blocks and a remainder."""
    torch.manual_seed(3)
    gru = grukit.GRU(16, 384, reset_after=reset_after)
    _assert_same(gru, torch.randn(3, 9, 16), torch.randn(1, 9, 384), None, monkeypatch)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("steps", [1, 8, 19])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_batch_one_loop_with_the_projection_ahead_matches_the_reference(
    reset_after, steps, direction, use_lengths, monkeypatch
):
    """B = 1 projects the next block of 8 steps inside the current block's recurrent products (reset_before: in
    phase 1, beside r and z): a partial last block (19), a single block (8), a single step, I != H, reversed and cut
    short."""
    torch.manual_seed(steps)
    gru = grukit.GRU(
        21,
        83,
        num_layers=2,
        bidirectional=direction == "bidirectional",
        reverse=direction == "reverse",
        reset_after=reset_after,
    )
    x, h0 = torch.randn(steps, 1, 21), torch.randn(4 if direction == "bidirectional" else 2, 1, 83)
    lengths = torch.tensor([max(1, steps - 5)]) if use_lengths else None
    _assert_same(gru, x, h0, lengths, monkeypatch)


@pytest.mark.parametrize("reset_after", [True, False])
def test_batch_one_loop_with_the_projection_ahead_passes_gradcheck(reset_after, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(2)
    gru = grukit.GRU(4, 6, reset_after=reset_after, dtype=torch.float64)
    x, h0 = torch.randn(11, 1, 4, dtype=torch.float64), torch.randn(1, 1, 6, dtype=torch.float64)
    _gradcheck(gru, x, h0, torch.tensor([9]), fast_mode=False)


@pytest.mark.parametrize("reset_after", [True, False])
def test_calls_of_changing_shapes_and_biases_reuse_the_buffers_correctly(reset_after, extension):
    """ext.forward folds the biases into a buffer it keeps between calls (and keeps its last view): calls that
    alternate hidden sizes, paths (B = 1 ahead loop, B = 8 fused, a GEMM) and biases each match the reference."""
    torch.manual_seed(4)
    cases = [(16, 1, 8), (64, 8, 40), (16, 1, 8), (200, 2, 5), (64, 8, 40), (16, 1, 8)]
    for hidden, batch, steps in cases:
        gru = grukit.GRU(hidden, hidden, reset_after=reset_after)
        with torch.no_grad():
            for p in gru.parameters():
                p.normal_(0, 0.3)  # biases well away from zero: a stale fold shows
        w_ih, w_hh, b_ih, b_hh = (p.detach() for p in gru.parameters())
        x, h0 = torch.randn(steps, batch, hidden), torch.randn(batch, hidden)
        y, h_n, _, _ = extension.forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, reset_after, False, False)
        y_ref, h_ref = reference.gru_layer(x, h0, GRUWeights(w_ih, w_hh, b_ih, b_hh), GRUConfig(reset_after))
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(h_n, h_ref, atol=1e-5, rtol=1e-6)


def test_a_bias_of_the_wrong_size_or_dtype_is_refused(extension):
    x, h0 = torch.randn(3, 1, 4), torch.zeros(1, 5)
    w_ih, w_hh, b = torch.randn(15, 4), torch.randn(15, 5), torch.randn(15)
    for b_ih, b_hh in ((b.double(), b), (b, b[:10])):
        with pytest.raises(RuntimeError, match=r"biases must be \(3H,\) CPU tensors of x's dtype"):
            extension.forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, True, False, False)


def test_eval_dropconnect_batch_first_and_learned_init(monkeypatch):
    """Eval (no saved gates), training DropConnect (a masked w_hh), batch_first input, a learnable h0."""
    torch.manual_seed(0)
    gru = grukit.GRU(5, 12, batch_first=True, learn_init=True, dropconnect=0.3)
    x = torch.randn(4, 6, 5)
    with torch.no_grad():
        gru.initial_state.normal_()
    gru.eval()
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    expected = gru(x)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    got = gru(x)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    gru.train()
    torch.manual_seed(3)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    expected = gru(x)[0]
    torch.manual_seed(3)  # the same DropConnect mask
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    got = gru(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(
    "inputs, hidden, regularisers",
    [(100, 420, {}), (7, 37, {"recurrent_dropout": 0.3, "zoneout": 0.2})],
    ids=["beyond-the-ahead-loop", "masked"],
)
def test_one_sequence_in_the_loop_that_streams_w_hh_matches_the_reference(
    reset_after, direction, inputs, hidden, regularisers, monkeypatch
):
    """B = 1 in forward_loop (W_ih and W_hh past the B = 1 ahead loop's 2 MiB, or masks, which it does not take):
    odd steps visit the panels backward (snake order); 7 steps of which the sequence's length keeps 5."""
    torch.manual_seed(2)
    gru = grukit.GRU(inputs, hidden, reset_after=reset_after, reverse=direction == "reverse", **regularisers)
    _assert_same(gru, torch.randn(7, 1, inputs), torch.randn(1, 1, hidden), torch.tensor([5]), monkeypatch)


REGULARISERS = [
    {"recurrent_dropout": 0.3},
    {"zoneout": 0.3},
    {"recurrent_dropout": 0.4, "zoneout": 0.2, "dropconnect": 0.2},
]


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("regularisers", REGULARISERS, ids=["dropout", "zoneout", "all"])
@pytest.mark.parametrize("training", [True, False])  # eval: no masks, zoneout's expectation
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_dropout_and_zoneout_match_the_reference(reset_after, regularisers, training, direction, monkeypatch):
    """The layer's sampled masks (recurrent dropout: one (B, H) mask on the state entering the recurrent products;
    zoneout: a (T, B, H) keep mask, or its expectation in eval) applied in the fused loop and its backward, with
    lengths cutting sequences short."""
    gru = grukit.GRU(
        7, 37, num_layers=2, reset_after=reset_after, bidirectional=direction == "bidirectional", **regularisers
    ).train(training)
    x, h0 = torch.randn(11, 9, 7), torch.randn(4 if direction == "bidirectional" else 2, 9, 37)
    _assert_same(gru, x, h0, torch.tensor([11, 3, 0, 7, 11, 1, 5, 10, 2]), monkeypatch)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize(
    "steps, batch, input_size, hidden",
    [(9, 1, 21, 83), (6, 8, 64, 64), (5, 2, 200, 300), (1, 1, 5, 12)],
    ids=["batch-one", "input-fused", "input-gemm", "one-step"],
)
def test_the_masks_on_every_input_path(reset_after, steps, batch, input_size, hidden, monkeypatch):
    """Masked calls all run the general loop (not the batch-one loop with the projection ahead, nor the single-step
    kernels), whichever way its input side comes: the micro-kernel's projection, fused into the loop, one GEMM."""
    gru = grukit.GRU(input_size, hidden, reset_after=reset_after, recurrent_dropout=0.25, zoneout=0.15)
    x, h0 = torch.randn(steps, batch, input_size), torch.randn(1, batch, hidden)
    _assert_same(gru.train(), x, h0, None, monkeypatch)
    gru.eval()
    with torch.no_grad():  # eval and no autograd: the forward alone (zoneout's expectation)
        outputs = {}
        for backend in ("reference", "cpu"):
            monkeypatch.setenv(dispatch.ENV_VAR, backend)
            outputs[backend] = gru(x, h0)
    for a, b in zip(outputs["reference"], outputs["cpu"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_masked_layer_passes_gradcheck(reset_after, use_lengths):
    """Float64 gradcheck of one masked layer through the backend (the masks fixed, as the layer passes them)."""
    torch.manual_seed(4)
    steps, batch, hidden = 5, 3, 4
    d = torch.float64
    backend = CpuBackend(load_extension())
    config = grukit.backends.GRUConfig(
        reset_after=reset_after, zoneout=0.3, recurrent_dropout=True, training=True, reverse=use_lengths
    )
    masks = grukit.backends.GRUMasks(
        recurrent_dropout=torch.bernoulli(torch.full((batch, hidden), 0.6, dtype=d)) / 0.6,
        zoneout=torch.bernoulli(torch.full((steps, batch, hidden), 0.3, dtype=d)),
    )
    lengths = torch.tensor([5, 2, 0]) if use_lengths else None

    def fn(x, h0, w_ih, w_hh, b_ih, b_hh):
        weights = grukit.backends.GRUWeights(w_ih, w_hh, b_ih, b_hh)
        return backend.gru_layer(x, h0, weights, config, lengths, masks)

    shapes = [(steps, batch, 2), (batch, hidden), (3 * hidden, 2), (3 * hidden, hidden), (3 * hidden,), (3 * hidden,)]
    inputs = [torch.randn(shape, dtype=d, requires_grad=True) for shape in shapes]
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-7)
    eval_config = grukit.backends.GRUConfig(reset_after=reset_after, zoneout=0.3)  # the expectation, no masks

    def fn_eval(*args):
        weights = grukit.backends.GRUWeights(*args[2:])
        return backend.gru_layer(args[0], args[1], weights, eval_config, lengths)

    assert gradcheck(fn_eval, inputs, eps=1e-6, atol=1e-7)


def _perturb_norms(gru: torch.nn.Module) -> None:
    """Move the layer norms' gains and biases off their (1, 0) start, so that a kernel ignoring them fails."""
    with torch.no_grad():
        for name, p in gru.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("regularisers", [{}, REGULARISERS[2]], ids=["plain", "masked"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layer_norm_matches_the_reference(reset_after, regularisers, training, direction, monkeypatch):
    """Each gate's recurrent product normalised before the gate math (forward_loop_norm), its backward through the
    norms, with the masks and lengths. Float64 to 1e-9 (the same function); float32 to 1e-5 of each tensor's largest
    value (at least 1e-5): the norms divide by each row's std, which scales float32 rounding up with the gradients
    (both backends then sit equally close to float64: about 1e-6 of the largest gradient)."""
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        torch.manual_seed(0)
        gru = grukit.GRU(
            7, 37, num_layers=2, reset_after=reset_after, bidirectional=direction == "bidirectional",
            layer_norm=True, dtype=dtype, **regularisers,
        ).train(training)  # fmt: skip
        _perturb_norms(gru)
        x, h0 = (
            torch.randn(11, 9, 7, dtype=dtype),
            torch.randn(4 if direction == "bidirectional" else 2, 9, 37, dtype=dtype),
        )
        lengths = torch.tensor([11, 3, 0, 7, 11, 1, 5, 10, 2])
        expected = _run("reference", gru, x, h0, lengths, monkeypatch)
        got = _run("cpu", gru, x, h0, lengths, monkeypatch)
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(b, a, atol=tol * max(1.0, a.abs().max().item()), rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
def test_layer_norm_passes_gradcheck(reset_after, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(3)
    gru = grukit.GRU(3, 5, layer_norm=True, reset_after=reset_after, dtype=torch.float64)
    _perturb_norms(gru)
    x, h0 = torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(1, 3, 5, dtype=torch.float64)
    _gradcheck(gru, x, h0, torch.tensor([5, 2, 0]), fast_mode=False)


def test_gru_cell_runs_on_the_cpu_backend(monkeypatch):
    torch.manual_seed(0)
    cell = grukit.GRUCell(6, 10)
    x, h = torch.randn(3, 6), torch.randn(3, 10)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    expected = cell(x, h)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.testing.assert_close(cell(x, h), expected, atol=1e-5, rtol=0)


def _cell_run(
    backend: str, cell: torch.nn.Module, xs: torch.Tensor, h0: torch.Tensor, monkeypatch, x_grad: bool = True
) -> list:
    """A GRUCell unrolled over xs (T, B, I) in training: the outputs, and the gradients of xs (None unless x_grad),
    h0 and each weight."""
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    cell.zero_grad(set_to_none=True)
    x, h = xs.detach().clone().requires_grad_(x_grad), h0.detach().clone().requires_grad_()
    state, outs = h, []
    for x_t in x:
        state = cell(x_t, state)
        outs.append(state)
    y = torch.stack(outs)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return [y.detach(), x.grad, h.grad, *(p.grad for p in cell.parameters())]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 4, 5])  # 5: past direct_batch, the packed loop
@pytest.mark.parametrize("hidden, inputs", [(16, 16), (13, 7)])  # 16: columns read whole vectors; 13, 7: tails
@pytest.mark.parametrize("x_grad", [True, False])
def test_a_trained_single_step_matches_the_reference(
    dtype, atol, reset_after, bias, batch, hidden, inputs, x_grad, monkeypatch
):
    """GRUCell training (T = 1 per call): the forward from the unpacked weights (B <= direct_batch), the backward
    with W_hh's columns read in place and the weight gradients, bias sums and dx without GEMM calls (T * B <= 8)
    give the reference's outputs and every gradient."""
    torch.manual_seed(batch + hidden)
    cell = grukit.GRUCell(inputs, hidden, bias=bias, reset_after=reset_after, dtype=dtype)
    xs, h0 = torch.randn(3, batch, inputs, dtype=dtype), torch.randn(batch, hidden, dtype=dtype)
    expected = _cell_run("reference", cell, xs, h0, monkeypatch, x_grad)
    got = _cell_run("cpu", cell, xs, h0, monkeypatch, x_grad)
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        torch.testing.assert_close(b, a, atol=atol, rtol=0, msg=lambda m, i=i: f"result {i}: {m}")


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("steps, batch", [(32, 4), (33, 4)])  # T * B = 128: grukit's loops; 132: GEMM calls
@pytest.mark.parametrize("hidden, inputs", [(48, 48), (13, 7)])  # whole vectors of columns; tails
def test_the_weight_gradients_on_both_sides_of_the_gemm_rule(reset_after, steps, batch, hidden, inputs, monkeypatch):
    """The backward's weight gradients, bias sums and dx come from grukit's own products up to 128 rows (T * B) and
    from GEMM calls past them: both match the reference."""
    torch.manual_seed(steps)
    gru = grukit.GRU(inputs, hidden, reset_after=reset_after)
    x, h0 = torch.randn(steps, batch, inputs), torch.randn(1, batch, hidden)
    _assert_same(gru, x, h0, None, monkeypatch, atol=2e-5)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("hidden", [8, 5])  # float64: 8 read in place, 5 packed
def test_a_single_step_passes_gradcheck(reset_after, hidden, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(2)
    gru = grukit.GRU(3, hidden, reset_after=reset_after, dtype=torch.float64)
    x, h0 = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, hidden, dtype=torch.float64)
    _gradcheck(gru, x, h0, None, fast_mode=False)


@given(
    steps=st.integers(1, 20),
    batch=st.integers(1, 9),
    input_size=st.integers(1, 40),
    hidden=st.integers(1, 40),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    reset_after=st.booleans(),
    use_lengths=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_match_the_reference(
    steps, batch, input_size, hidden, layers, bidirectional, batch_first, bias, reset_after, use_lengths, seed
):
    torch.manual_seed(seed)
    gru = grukit.GRU(
        input_size,
        hidden,
        num_layers=layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        reset_after=reset_after,
    )
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(shape)
    h0 = torch.randn(layers * (2 if bidirectional else 1), batch, hidden)
    lengths = torch.randint(0, steps + 1, (batch,)) if use_lengths else None  # unsorted, zeros included
    with pytest.MonkeyPatch.context() as monkeypatch:
        _assert_same(gru, x, h0, lengths, monkeypatch)


def _gradcheck(gru, x, h0, lengths, fast_mode: bool) -> None:
    names = [n for n, _ in gru.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in gru.parameters()]

    def fn(x, h0, *flat):
        return torch.func.functional_call(gru, dict(zip(names, flat, strict=True)), (x, h0), {"lengths": lengths})

    inputs = (x.requires_grad_(), h0.requires_grad_(), *params)
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=fast_mode)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_float64_gradcheck_fast(reset_after, bidirectional, use_lengths, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    gru = grukit.GRU(3, 5, num_layers=2, bidirectional=bidirectional, reset_after=reset_after, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 3, 5, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0]) if use_lengths else None
    _gradcheck(gru, x, h0, lengths, fast_mode=True)


@pytest.mark.parametrize("reset_after", [True, False])
def test_float64_gradcheck_full(reset_after, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(1)
    gru = grukit.GRU(2, 3, bidirectional=True, bias=reset_after, reset_after=reset_after, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64)
    _gradcheck(gru, x, h0, torch.tensor([4, 3]), fast_mode=False)


def test_a_training_call_is_one_cpu_autograd_node(monkeypatch):
    """The layer records one node written in C++ (ext.layer), whose gradient matches the reference's."""
    torch.manual_seed(2)
    gru = grukit.GRU(3, 5)
    x = torch.randn(4, 2, 3, requires_grad=True)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    y, h_n = gru(x)
    node = y.grad_fn
    assert "GRULayerFunction" in node.name(), node.name()  # y is the node's output itself (h_n is unsqueezed)
    got = torch.autograd.grad(y.sum() + h_n.sum(), [x, *gru.parameters()])
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    y, h_n = gru(x)
    want = torch.autograd.grad(y.sum() + h_n.sum(), [x, *gru.parameters()])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_double_backward_raises(monkeypatch):
    """The fused backward is not itself differentiable: a graph of the gradient (for a second derivative) fails
    loudly and names the backend that serves it, instead of losing the terms through the saved activations."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    gru = grukit.GRU(2, 4)
    x = torch.randn(3, 1, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"not differentiable.*GRUKIT_BACKEND=reference"):
        torch.autograd.grad(gru(x)[0].sum(), x, create_graph=True)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    (g,) = torch.autograd.grad(gru(x)[0].sum(), x, create_graph=True)
    assert g.requires_grad


def test_it_is_the_default_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    x = torch.randn(3, 2, 4)
    assert dispatch.gru_backend(x, grukit.backends.GRUConfig(), None).name == "cpu"
    assert dispatch.mingru_backend(x).name == "reference"
    every_variant = grukit.backends.GRUConfig(layer_norm=True, zoneout=0.2, recurrent_dropout=True, training=True)
    assert dispatch.gru_backend(x, every_variant, None).name == "cpu"
    with torch.autocast("cpu"):  # what remains on the reference: autocast and torch.compile traces
        assert dispatch.gru_backend(x, grukit.backends.GRUConfig(), None).name == "reference"


@pytest.mark.parametrize(
    "kwargs,x,reason",
    [
        ({"dtype": torch.float16}, torch.randn(3, 2, 4, dtype=torch.float16), "dtype torch.float16"),
    ],
)
def test_forced_cpu_raises_naming_what_it_lacks(kwargs, x, reason, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    gru = grukit.GRU(4, 6, **kwargs).train()
    with pytest.raises(dispatch.BackendUnavailable, match=reason):
        gru(x)


def test_decline_other_devices_and_compile_tracing():
    backend = CpuBackend(load_extension())
    config = grukit.backends.GRUConfig()
    assert "meta" in backend.supports_gru(torch.randn(3, 2, 4, device="meta"), config, None)
    assert backend.supports_mingru(torch.randn(3, 2, 4)) is not None

    @torch.compile(backend="eager", fullgraph=True)
    def reason(x):
        return backend.supports_gru(x, config, None) is None

    assert not reason(torch.randn(3, 2, 4))


def test_the_build_cache_is_reused(tmp_path):
    """A new process loads the cached library without compiling: well under the first build's time."""
    name, directory = build_dir(flag_sets()[0])
    assert directory.is_dir() and (directory / f"{name}.so").is_file()
    code = "import time, grukit.backends.cpu as c; t = time.perf_counter(); c.load_extension()"
    code += "; print(time.perf_counter() - t)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 2.0, out
    assert time.perf_counter() - start < 30


_HOLD_LOCK = """
import fcntl, os, sys, time
directory = sys.argv[1]
os.makedirs(directory, exist_ok=True)
open(os.path.join(directory, "lock"), "w").close()  # torch's baton, as a build killed mid-way leaves it
handle = open(directory + ".lock", "a+b")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def _hold_build_lock(directory) -> subprocess.Popen:
    """A process that holds the build lock of ``directory`` (and leaves torch's baton), once it says so."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_build_killed_mid_way_does_not_block_the_next(tmp_path):
    """The lock of a killed builder is released by the kernel and its leftover torch baton is removed."""
    from grukit.backends.cpu.build import build_lock

    directory = tmp_path / "cpu-key"
    holder = _hold_build_lock(directory)
    holder.kill()
    holder.wait()
    start = time.perf_counter()
    with build_lock(directory, wait_s=5):
        assert not (directory / "lock").exists()
    assert time.perf_counter() - start < 2


def test_waiting_for_a_live_build_is_logged_and_bounded(tmp_path, capsys):
    from grukit.backends.cpu.build import build_lock

    directory = tmp_path / "cpu-key"
    holder = _hold_build_lock(directory)
    try:
        with pytest.raises(RuntimeError, match=r"held .*cpu-key\.lock"), build_lock(directory, wait_s=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert "waiting for another process's build" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- packed-weight cache


@pytest.fixture
def pack_cache(monkeypatch):
    """The cache, switched on (it is off by default) and empty."""
    from grukit.backends.cpu import PACK_CACHE

    PACK_CACHE.clear()
    monkeypatch.setattr(PACK_CACHE, "capacity", 8)
    yield PACK_CACHE
    PACK_CACHE.clear()


def test_the_cache_is_off_by_default():
    from grukit.backends.cpu.backend import PackCache

    assert PackCache.capacity == 0


def _eval_pair(gru, x, h0, monkeypatch):
    """(reference, cpu) outputs of an eval, no-grad call: the path that uses the cache."""
    with torch.no_grad():
        monkeypatch.setenv(dispatch.ENV_VAR, "reference")
        expected = gru(x, h0)
        monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
        got = gru(x, h0)
    return expected, got


def _assert_pair(pair, atol=1e-5):
    for a, b in zip(*pair, strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=0)


@pytest.mark.parametrize("steps", [1, 7])
def test_the_cache_is_reused_and_invalidated_by_in_place_updates(steps, pack_cache, monkeypatch):
    torch.manual_seed(0)
    gru = grukit.GRU(6, 10).eval()
    x, h0 = torch.randn(steps, 3, 6), torch.randn(1, 3, 10)
    _assert_pair(_eval_pair(gru, x, h0, monkeypatch))
    packs = pack_cache.packs
    _assert_pair(_eval_pair(gru, x, h0, monkeypatch))
    assert pack_cache.packs == packs  # a hit: nothing repacked
    for name in ("weight_hh_l0", "weight_ih_l0", "bias_hh_l0", "bias_ih_l0"):
        with torch.no_grad():
            getattr(gru, name).add_(0.1)
        _assert_pair(_eval_pair(gru, x, h0, monkeypatch))
        assert pack_cache.packs == packs + 1, name
        packs = pack_cache.packs
    with torch.no_grad():
        gru.weight_hh_l0[2].mul_(-1)  # through a view: the same version counter
    _assert_pair(_eval_pair(gru, x, h0, monkeypatch))
    gru.load_state_dict({k: v + 0.05 for k, v in gru.state_dict().items()})
    _assert_pair(_eval_pair(gru, x, h0, monkeypatch))
    gru.weight_hh_l0 = torch.nn.Parameter(torch.randn(30, 10))  # a new tensor object
    _assert_pair(_eval_pair(gru, x, h0, monkeypatch))


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_the_cache_is_invalidated_by_optimizer_steps(optimizer, pack_cache, monkeypatch):
    torch.manual_seed(0)
    gru = grukit.GRU(4, 9, num_layers=2)
    opt = optimizer(gru.parameters(), lr=0.1)
    x = torch.randn(5, 2, 4)
    for _ in range(3):
        gru.eval()
        _assert_pair(_eval_pair(gru, x, None, monkeypatch))
        _assert_pair(_eval_pair(gru, x[:1], None, monkeypatch))  # the step kernel
        gru.train()
        opt.zero_grad()
        gru(x)[0].square().mean().backward()
        opt.step()


def test_dropconnect_masks_do_not_grow_the_cache(pack_cache, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    gru = grukit.GRU(4, 8, dropconnect=0.5)
    x = torch.randn(3, 2, 4)
    for _ in range(20):
        gru(x)  # training, grad enabled: a fresh masked w_hh per call, never cached
        with torch.no_grad():
            gru(x)  # training under no_grad: fresh masked tensors without grad_fn; the LRU bounds them
    assert len(pack_cache) <= pack_cache.capacity
    pack_cache.capacity, saved = 0, pack_cache.capacity
    try:
        pack_cache.clear()
        with torch.no_grad():
            gru.eval()(x)
        assert len(pack_cache) == 0  # capacity 0 turns the cache off
    finally:
        pack_cache.capacity = saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hidden, batch, inputs", [(64, 1, 64), (13, 5, 7), (1, 1, 1), (40, 4, 3)])
def test_streaming_step_matches_the_reference(dtype, bias, hidden, batch, inputs, pack_cache, monkeypatch):
    torch.manual_seed(hidden)
    gru = grukit.GRU(inputs, hidden, num_layers=2, bias=bias, dtype=dtype).eval()
    xs = torch.randn(6, batch, inputs, dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        monkeypatch.setenv(dispatch.ENV_VAR, "reference")
        expected = gru(xs)
        monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
        packs = pack_cache.packs
        state, ys = None, []
        for x_t in xs:
            y_t, state = gru.step(x_t, state)
            ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys), expected[0], atol=atol, rtol=0)
    torch.testing.assert_close(state, expected[1], atol=atol, rtol=0)
    assert pack_cache.packs == packs + 2  # one per layer, reused by every step


# ----------------------------------------------------------------------------------------- stepper and two threads


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hidden, batch, inputs", [(37, 9, 7), (1, 1, 1), (64, 1, 64)])
def test_the_fused_stepper_matches_the_reference(dtype, atol, reset_after, bias, hidden, batch, inputs, monkeypatch):
    """Both equation forms (reset_after=False: two phases per layer), tail lanes, a row remainder, three layers."""
    torch.manual_seed(hidden)
    gru = grukit.GRU(inputs, hidden, num_layers=3, bias=bias, reset_after=reset_after, dtype=dtype).eval()
    xs = torch.randn(5, batch, inputs, dtype=dtype)
    h0 = torch.randn(3, batch, hidden, dtype=dtype)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with torch.no_grad():
        expected = gru(xs, h0)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    stepper = gru.stepper()
    assert stepper._fused is not None  # the C++ stepper, not the fallback through gru.step
    stepper.reset(h0)
    ys = torch.stack([stepper(x_t) for x_t in xs])
    torch.testing.assert_close(ys, expected[0], atol=atol, rtol=0)
    torch.testing.assert_close(stepper.state, expected[1], atol=atol, rtol=0)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_stepper_gives_the_same_bits_whichever_way_it_visits_the_panels(reset_after, bf16, monkeypatch):
    """Odd calls visit the hidden-unit panels backward (snake order, for the cache): the same step twice gives the
    same bits, tail panel (H = 70: five panels, the last of 6 units) and two layers included."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    gru = grukit.GRU(9, 70, num_layers=2, reset_after=reset_after).eval()
    stepper = gru.stepper(bf16=bf16)
    assert stepper._fused is not None
    x, h = torch.randn(3, 9), torch.randn(2, 3, 70)
    first = [t.clone() for t in stepper.step(x, h)]
    for _ in range(3):  # backward, forward, backward
        for a, b in zip(stepper.step(x, h), first, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_an_uncached_eval_step_runs_from_the_unpacked_weights(dtype, atol, reset_after, bias, batch, monkeypatch):
    """gru.step under no_grad without the pack cache is one ext.stack call (which runs step_direct per layer, nothing
    packed); it matches the reference."""
    torch.manual_seed(batch)
    gru = grukit.GRU(19, 37, num_layers=2, bias=bias, reset_after=reset_after, dtype=dtype).eval()
    x, h = torch.randn(batch, 19, dtype=dtype), torch.randn(2, batch, 37, dtype=dtype)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with torch.no_grad():
        expected = gru.step(x, h)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    calls = []
    backend = dispatch.gru_backend(x.unsqueeze(0), gru._config(0, False), None)
    assert isinstance(backend, CpuBackend)
    monkeypatch.setattr(backend, "ext", _Spy(backend.ext, calls))
    with torch.no_grad():
        got = gru.step(x, h)
    assert calls == ["stack"]  # all layers in one call
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


class _Spy:
    """The extension, recording which entry each call used."""

    def __init__(self, ext, calls: list[str]) -> None:
        self._ext, self._calls = ext, calls

    def __getattr__(self, name: str):
        if name in ("forward", "stack", "step", "step_direct"):
            self._calls.append(name)
        return getattr(self._ext, name)


def test_the_stepper_writes_into_given_outputs_and_checks_them(monkeypatch):
    """``out=`` runs the same kernel into the caller's tensors; aliasing or a wrong shape is refused."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    stepper = grukit.GRU(3, 5, num_layers=2).eval().stepper()
    x, h = torch.randn(4, 3), torch.randn(2, 4, 5)
    expected = stepper.step(x, h)
    out = (torch.empty(4, 5), torch.empty(2, 4, 5))
    assert stepper.step(x, h, out=out) is out
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="shares memory"):
        stepper.step(x, h, out=(torch.empty(4, 5), h))  # the state written over while being read
    with pytest.raises(RuntimeError, match="state_out must be a contiguous"):
        stepper.step(x, h, out=(torch.empty(4, 5), torch.empty(2, 3, 5)))


def test_the_stepper_refuses_autograd_and_wrong_dtypes(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    stepper = grukit.GRU(3, 4).eval().stepper()
    with pytest.raises(RuntimeError, match="inference only"):
        stepper(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="dtype"):
        stepper.step(torch.randn(2, 3, dtype=torch.float64))
    with torch.no_grad():
        assert stepper(torch.randn(2, 3, requires_grad=True)).shape == (2, 4)


_POOLS = {"openmp-pool": 1, "own-worker": 0}  # set_split_pool's values: torch's OpenMP threads, grukit's own worker


@pytest.fixture(params=_POOLS.values(), ids=_POOLS.keys())
def two_threads(request):
    """Two torch threads for the whole test (torch's own GEMMs then run alike on both sides of a comparison), the
    split's second thread from torch's OpenMP pool or grukit's own worker."""
    ext = load_extension()
    saved, pool = torch.get_num_threads(), ext.split_stats()["pool"]
    torch.set_num_threads(2)
    ext.set_split_pool(request.param)
    yield
    ext.set_split_mode(1)
    ext.set_split_pool(pool)
    torch.set_num_threads(saved)


def test_the_split_pool_defaults_by_wait_policy():
    """torch's OpenMP threads unless OMP_WAIT_POLICY=PASSIVE (read when the team is first used), in a new process.

    A build without OpenMP (a compiler without -fopenmp) has only its own worker: pool 0 under every policy."""
    ext = load_extension()
    before = ext.split_stats()["pool"]
    try:
        ext.set_split_pool(1)
        openmp = "1"
    except ValueError:
        openmp = "0"
    ext.set_split_pool(before)
    code = "from grukit.backends.cpu import load_extension as l; print(l().split_stats()['pool'])"
    for policy, pool in (("PASSIVE", "0"), ("passive", "0"), ("ACTIVE", openmp), (None, openmp)):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy is not None:
            env["OMP_WAIT_POLICY"] = policy
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.strip() == pool, (policy, out)
    with pytest.raises(ValueError, match="not a pool"):
        load_extension().set_split_pool(2)


def _unsplit_and_split(fn):
    """fn() with the time loop on one thread, then with each step's hidden units split over two.

    Torch's thread count stays at two on both sides: MKL's GEMMs (the input projection before the loop, dx and
    the weight gradients after it) may change bits with the thread count on some CPUs (Intel), which is torch's
    behaviour, not ours; only the split of our time loop differs between the two calls."""
    ext = load_extension()
    ext.set_split_mode(0)
    jobs = ext.split_stats()["split_jobs"]
    one = fn()
    assert ext.split_stats()["split_jobs"] == jobs  # the unsplit side really ran on one thread
    ext.set_split_mode(2)
    return one, fn()


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize(
    "batch, regularisers",
    [(2, {}), (1, {}), (2, {"recurrent_dropout": 0.3, "zoneout": 0.2}), (3, {"layer_norm": True, "zoneout": 0.2})],
    ids=["batch-two", "batch-one", "masked", "layer-norm"],  # batch-one: the loop with the projection ahead
)
def test_two_threads_give_the_same_bits(reset_after, batch, regularisers, two_threads, monkeypatch):
    """Each hidden unit is computed by one thread with the same arithmetic: splitting the time loop over two
    threads changes no bit of the outputs, the final state or any gradient."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    # 260: a tail panel; a step over split_ns
    gru = grukit.GRU(40, 260, num_layers=2, reset_after=reset_after, **regularisers)
    x, lengths = torch.randn(12, batch, 40), torch.tensor([7, 12, 10][:batch])
    ext = load_extension()

    def train():
        torch.manual_seed(1)  # the same masks in both runs
        gru.zero_grad(set_to_none=True)
        y, h_n = gru(x, lengths=lengths)
        (y.square().sum() + h_n.sum()).backward()
        return [y.detach(), h_n.detach(), *(p.grad for p in gru.parameters())]

    def steps():
        stepper = gru.eval().stepper()
        out = torch.stack([stepper(x_t) for x_t in x])
        gru.train()
        return [out, stepper.state]

    for fn in (train, steps):
        before = ext.split_stats()
        one, two = _unsplit_and_split(fn)
        after = ext.split_stats()
        assert after["split_jobs"] > before["split_jobs"]  # two threads served the split run
        # with a barrier in every step (counted as passed: whether a thread waited at one is timing)
        assert after["barriers"] >= before["barriers"] + len(x)
        assert after["barrier_sleeps"] - before["barrier_sleeps"] <= after["barrier_waits"] - before["barrier_waits"]
        # the back-off's inputs: the threads' time at work in split jobs grows, their time waiting never shrinks
        assert after["work_ns"] > before["work_ns"] and after["wait_ns"] >= before["wait_ns"]
        for i, (a, b) in enumerate(zip(one, two, strict=True)):  # 0, 1: outputs, state; then the gradients
            assert torch.equal(a, b), f"{fn.__name__}: result {i} differs by {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("hidden", [256, 260])  # 256: W_hh read in place by the backward; 260: a tail panel, packed
@pytest.mark.parametrize("batch", [1, 3])  # 1: the gate rows' sums reduced a panel at a time (dot_block)
def test_a_single_step_splits_over_two_threads(reset_after, hidden, batch, two_threads, monkeypatch):
    """A trained single step (the forward from the unpacked weights, reset_before with its barrier between r and n)
    and an eval one (ext.stack's step_direct), split or not: the same bits."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    cell = grukit.GRUCell(hidden, hidden, reset_after=reset_after)
    gru = grukit.GRU(hidden, hidden, reset_after=reset_after).eval()
    xs, h0 = torch.randn(2, batch, hidden), torch.randn(batch, hidden)
    ext = load_extension()

    def both():
        with torch.no_grad():
            y, h_n = gru(xs[:1], h0.unsqueeze(0))
        return [y, h_n, *_cell_run("cpu", cell, xs, h0, monkeypatch)]

    jobs = ext.split_stats()["split_jobs"]
    one, two = _unsplit_and_split(both)
    assert ext.split_stats()["split_jobs"] >= jobs + 5  # the eval step, and each trained step's forward and backward
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        assert torch.equal(a, b), f"result {i} differs by {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_backward_loop_splits_over_two_threads(reset_after, layer_norm, two_threads, monkeypatch):
    """The backward through time splits too (each thread its hidden units' gate gradients and its panels of dh_prev,
    a barrier between them): split or not, the same bits."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    gru = grukit.GRU(40, 260, reset_after=reset_after, recurrent_dropout=0.2, layer_norm=layer_norm)
    _perturb_norms(gru)
    x = torch.randn(9, 3, 40)
    ext = load_extension()
    grads = []
    for mode in (0, 2):
        ext.set_split_mode(0)  # the forward on one thread both times
        torch.manual_seed(1)
        gru.zero_grad(set_to_none=True)
        y, h_n = gru(x)
        ext.set_split_mode(mode)
        jobs = ext.split_stats()["split_jobs"]
        (y.square().sum() + h_n.sum()).backward()
        assert (ext.split_stats()["split_jobs"] > jobs) == (mode == 2)
        grads.append([p.grad for p in gru.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("hidden, batch, layers", [(37, 9, 2), (64, 1, 1), (33, 2, 1)])
def test_bf16_stepper_weights_stay_close_to_float32(reset_after, hidden, batch, layers, monkeypatch):
    """bfloat16 keeps 8 bits of mantissa: each weight moves by at most 2^-9 of itself, the outputs by ~1e-3 (33: an
    odd k, whose last pair has no partner)."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    torch.manual_seed(0)
    gru = grukit.GRU(hidden, hidden, num_layers=layers, reset_after=reset_after).eval()
    xs = torch.randn(8, batch, hidden)
    exact, rounded = gru.stepper(), gru.stepper(bf16=True)
    with torch.no_grad():
        rounded_model = grukit.GRU(hidden, hidden, num_layers=layers, reset_after=reset_after).eval()
        rounded_model.load_state_dict(
            {k: v.bfloat16().float() if "weight" in k else v for k, v in gru.state_dict().items()}
        )
    emulated = rounded_model.stepper()  # float32 arithmetic on the weight matrices rounded to bfloat16 (biases not)
    for x_t in xs:
        a, b, c = exact(x_t), rounded(x_t), emulated(x_t)
        torch.testing.assert_close(b, c, atol=1e-5, rtol=0)  # the kernel rounds to nearest even, as torch does
        assert 0 < (b - a).abs().max() < 2e-2


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize(
    "variant",
    [{"layer_norm": True}, {"zoneout": 0.3}, {"layer_norm": True, "zoneout": 0.2, "bias": False}],
    ids=["layer_norm", "zoneout", "both-no-bias"],
)
def test_the_fused_stepper_serves_layer_norm_and_zoneout(dtype, atol, reset_after, variant, monkeypatch):
    """Eval steps of a layer-norm or zoneout GRU (the expectation) run in the fused stepper, and step by step give
    the reference's full-sequence forward."""
    torch.manual_seed(0)
    gru = grukit.GRU(5, 37, num_layers=2, reset_after=reset_after, dtype=dtype, **variant).eval()
    _perturb_norms(gru)
    x, h0 = torch.randn(7, 3, 5, dtype=dtype), torch.randn(2, 3, 37, dtype=dtype)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with torch.no_grad():
        expected_y, expected_h = gru(x, h0)
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    stepper = gru.stepper()
    assert stepper._fused is not None  # the C++ stepper, not gru.step from Python
    h, ys = h0, []
    for x_t in x:
        y, h = stepper.step(x_t, h)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), expected_y, atol=atol, rtol=0)
    torch.testing.assert_close(h, expected_h, atol=atol, rtol=0)


def test_bf16_stepper_needs_a_float32_fused_model(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    for model in (grukit.GRU(3, 4, dtype=torch.float64), grukit.GRU(3, 4, layer_norm=True)):
        with pytest.raises(ValueError, match="bf16"):
            model.eval().stepper(bf16=True)


_FORK_AFTER_SPLIT = """
import os, sys, torch, grukit
from grukit.backends.cpu import load_extension
ext = load_extension()
ext.set_split_pool(int(sys.argv[1]))
torch.set_num_threads(2)
torch.manual_seed(0)
gru, x = grukit.GRU(8, 260), torch.randn(5, 2, 8)
with torch.no_grad():
    expected = gru(x)[0]
jobs = ext.split_stats()["split_jobs"]
assert jobs > 0
pid = os.fork()
if pid == 0:  # the child has neither the worker nor OpenMP's threads: its steps run on one thread
    with torch.no_grad():
        ok = torch.equal(gru(x)[0], expected) and ext.split_stats()["split_jobs"] == jobs
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("pool", _POOLS.values(), ids=_POOLS.keys())
def test_a_forked_child_runs_split_sized_steps_on_one_thread(pool, monkeypatch):
    """After the parent split steps over two threads, a forked child (a DataLoader worker) neither hangs on the
    threads it lacks nor changes a bit."""
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    out = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_SPLIT, str(pool)], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "0", out
