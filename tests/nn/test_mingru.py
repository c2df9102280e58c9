"""MinGRU: the layer's shapes, checks and streaming, and the reference backend's MinGRU math."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from grukit.backends import reference
from grukit.backends.contract import MinGRUWeights
from grukit.nn.mingru import MinGRU

TOL32 = {"atol": 1e-5, "rtol": 1e-5}  # the project's float32 agreement bound (ARCHITECTURE.md)
TOL64 = {"atol": 1e-10, "rtol": 1e-10}
CHUNK = reference.SCAN_CHUNK  # steps per log-space scan; the state is carried across chunks

sizes = st.integers(1, 16)


def make_input(m: MinGRU, steps: int, batch: int, unbatched: bool, with_h0: bool, gen: torch.Generator, dtype=None):
    """Random x shaped for m's forward ((T, I), (T, B, I) or (B, T, I)) and h0 ((L, H), (L, B, H) or None)."""
    dtype = dtype or m.weight_ih_l0.dtype
    if unbatched:
        x = torch.randn(steps, m.input_size, generator=gen, dtype=dtype)
        h_shape: tuple[int, ...] = (m.num_layers, m.hidden_size)
    else:
        shape = (batch, steps) if m.batch_first else (steps, batch)
        x = torch.randn(*shape, m.input_size, generator=gen, dtype=dtype)
        h_shape = (m.num_layers, batch, m.hidden_size)
    h0 = torch.randn(*h_shape, generator=gen, dtype=dtype) if with_h0 else None
    return x, h0


def time_dim(m: MinGRU, x: torch.Tensor) -> int:
    return 1 if (m.batch_first and x.dim() == 3) else 0


def naive_mingru(x: torch.Tensor, h0: torch.Tensor | None, m: MinGRU) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations written out per step, independent of grukit's backends. x: (T, B, I), h0: (L, B, H)."""
    hidden = m.hidden_size

    def g(v):
        return torch.where(v >= 0, v + 0.5, 1.0 / (1.0 + torch.exp(-v)))

    layer_in = x
    finals = []
    for k in range(m.num_layers):
        w = getattr(m, f"weight_ih_l{k}")
        b = getattr(m, f"bias_ih_l{k}") if m.bias else torch.zeros(2 * hidden, dtype=w.dtype)
        w_z, w_h, b_z, b_h = w[:hidden], w[hidden:], b[:hidden], b[hidden:]
        h = torch.zeros(x.shape[1], hidden, dtype=x.dtype) if h0 is None else h0[k]
        outs = []
        for t in range(x.shape[0]):
            z = 1.0 / (1.0 + torch.exp(-(layer_in[t] @ w_z.T + b_z)))
            h_tilde = g(layer_in[t] @ w_h.T + b_h)
            h = (1 - z) * h + z * h_tilde
            outs.append(h)
        layer_in = torch.stack(outs)
        finals.append(h)
    return layer_in, torch.stack(finals)


# ---------------------------------------------------------------- parallel scan vs sequential


@given(
    steps=st.integers(1, 40),
    batch=st.integers(1, 4),
    input_size=sizes,
    hidden_size=sizes,
    num_layers=st.integers(1, 3),
    bias=st.booleans(),
    batch_first=st.booleans(),
    unbatched=st.booleans(),
    with_h0=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_scan_matches_sequential(
    steps, batch, input_size, hidden_size, num_layers, bias, batch_first, unbatched, with_h0, seed
):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = MinGRU(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first)
    x, h0 = make_input(m, steps, batch, unbatched, with_h0, gen)
    with torch.no_grad():
        y, h_n = m(x, h0)  # parallel scan
        y_seq, h_seq = m.stream(h0)(x)  # step by step
        y_gru, h_gru = torch.nn.GRU(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first)(x, h0)
    assert y.shape == y_gru.shape and h_n.shape == h_gru.shape
    torch.testing.assert_close(y, y_seq, **TOL32)
    torch.testing.assert_close(h_n, h_seq, **TOL32)
    torch.testing.assert_close(h_n[-1], y.select(time_dim(m, x), -1))


def test_scan_treats_negative_h0_linearly():
    """minGRU-pytorch issue #9: a scan that takes log(h0) breaks (NaN or wrong) for negative h0."""
    gen = torch.Generator().manual_seed(9)
    hidden = 5
    w = MinGRUWeights(torch.randn(2 * hidden, 3, generator=gen), torch.randn(2 * hidden, generator=gen))
    x = torch.randn(20, 4, 3, generator=gen)
    h0 = -0.1 - 3 * torch.rand(4, hidden, generator=gen)  # every entry negative, some far below g's range
    y, h_n = reference.mingru_scan(x, h0, w)
    y_seq, h_seq = reference.mingru_sequential(x, h0, w)
    assert torch.isfinite(y).all()
    assert (y[0] < 0).any()  # the negative start is still visible, so the check below has teeth
    torch.testing.assert_close(y, y_seq, **TOL32)
    torch.testing.assert_close(h_n, h_seq, **TOL32)

    m = MinGRU(3, hidden, num_layers=2)
    hx = -2.0 * torch.ones(2, 4, hidden)
    with torch.no_grad():
        torch.testing.assert_close(m(x, hx), m.stream(hx)(x), **TOL32)
        torch.testing.assert_close(m(x, torch.zeros(2, 4, hidden)), m(x))


@pytest.mark.parametrize("steps", [1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1, 3 * CHUNK + 4])
def test_scan_chunks_carry_state(steps):
    """The scan restarts every reference.SCAN_CHUNK steps; lengths around the boundaries must still match."""
    gen = torch.Generator().manual_seed(steps)
    m = MinGRU(3, 4, dtype=torch.float64)
    x = torch.randn(steps, 2, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(1, 2, 4, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y, h_n = m(x, h0)
        y_ref, h_ref = naive_mingru(x, h0, m)
    torch.testing.assert_close(y, y_ref, **TOL64)
    torch.testing.assert_close(h_n, h_ref, **TOL64)


# ---------------------------------------------------------------- the math, pinned independently


def test_hand_computed_values():
    """One unit, z = sigmoid(0) = 1/2, h~ = g(x): h1 = g(2)/2 = 1.25, h2 = 1.25/2 + sigmoid(-1)/2."""
    m = MinGRU(1, 1, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor([[0.0], [1.0]]))
        m.bias_ih_l0.zero_()
    x = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)  # unbatched (T=2, I=1)
    expected = torch.tensor([[1.25], [0.625 + 0.5 / (1 + math.exp(1.0))]], dtype=torch.float64)
    for y, h_n in (m(x), m.stream()(x)):
        torch.testing.assert_close(y, expected, **TOL64)
        torch.testing.assert_close(h_n, expected[-1:], **TOL64)


@pytest.mark.parametrize("bias", [True, False])
def test_matches_naive_paper_loop(bias):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    m = MinGRU(5, 7, num_layers=3, bias=bias, dtype=torch.float64)
    x = 2 * torch.randn(23, 3, 5, generator=gen, dtype=torch.float64)  # wide enough to hit both sides of g
    h0 = torch.randn(3, 3, 7, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y_ref, h_ref = naive_mingru(x, h0, m)
        for y, h_n in (m(x, h0), m.stream(h0)(x)):
            torch.testing.assert_close(y, y_ref, **TOL64)
            torch.testing.assert_close(h_n, h_ref, **TOL64)
        torch.testing.assert_close(m(x)[0], naive_mingru(x, None, m)[0], **TOL64)


def test_long_sequence_float32():
    """T=512 in float32: the scan and the sequential loop agree with a float64 naive loop, values and gradients.

    One log-space scan over T steps keeps only about eps32 * |log A_T| = eps32 * sum_t softplus(k_t) of
    relative precision, which grows linearly with T: an unchunked scan measured 6.6e-5 (values) and 1.8e-2
    (gradients, relative to their largest entry) here. reference.SCAN_CHUNK = 32 restarts the scan every 32
    steps, which bounds the error independently of T: over 20 seeds the worst was 4.1e-6 (values) and 5.4e-5
    (gradients; the sequential loop itself reaches 8.8e-6). Bounds: the project's 1e-5 for values, and
    2e-4 relative for gradients (about 4x the measured worst, 90x below the unchunked scan's error).
    """
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = MinGRU(8, 16, num_layers=2)
    m64 = copy.deepcopy(m).double()
    x = torch.randn(512, 3, 8, generator=gen)
    h0 = torch.randn(2, 3, 16, generator=gen)

    def run(module, fn, dtype):
        xx, hh = x.to(dtype).clone().requires_grad_(), h0.to(dtype).clone().requires_grad_()
        y, _ = fn(module, xx, hh)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        grads = [xx.grad, hh.grad] + [p.grad.clone() for p in module.parameters()]
        module.zero_grad()
        return y.detach().double(), [g.double() for g in grads]

    def forward(module, xx, hh):
        return module(xx, hh)

    def stream(module, xx, hh):
        return module.stream(hh)(xx)

    y_ref, g_ref = run(m64, lambda module, xx, hh: naive_mingru(xx, hh, module), torch.float64)
    for fn in (forward, stream):
        y, grads = run(m, fn, torch.float32)
        torch.testing.assert_close(y, y_ref, **TOL32)
        for g, ref in zip(grads, g_ref, strict=True):
            assert (g - ref).abs().max() <= 2e-4 * ref.abs().max()


# ---------------------------------------------------------------- gradients


class _Runner(torch.nn.Module):
    """Runs a MinGRU one way (whole forward, two stream chunks, or step by step) so functional_call can swap
    its parameters for gradcheck's inputs."""

    def __init__(self, m: MinGRU, mode: str) -> None:
        super().__init__()
        self.m, self.mode = m, mode

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "stream":
            s = self.m.stream(h0)
            a, _ = s(x[:2])
            b, h_n = s(x[2:])
            return torch.cat([a, b]), h_n
        if self.mode == "step":
            ys, h = [], h0
            for x_t in x.unbind(0):
                y_t, h = self.m.step(x_t, h)
                ys.append(y_t)
            return torch.stack(ys), h
        return self.m(x, h0)


@pytest.mark.parametrize("mode", ["forward", "forward_chunked", "stream", "step"])
def test_gradcheck_float64(mode, monkeypatch):
    if mode == "forward_chunked":  # several scan chunks in a short sequence, so the carry is differentiated too
        monkeypatch.setattr(reference, "SCAN_CHUNK", 2)
    torch.manual_seed(1)
    runner = _Runner(MinGRU(3, 4, num_layers=2, dtype=torch.float64), mode)
    names = [n for n, _ in runner.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in runner.parameters()]
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, h0, *weights):
        return functional_call(runner, dict(zip(names, weights, strict=True)), (x, h0))

    assert torch.autograd.gradcheck(fn, (x, h0, *params))


# ---------------------------------------------------------------- streaming


@given(
    steps=st.integers(1, 40),
    batch=st.integers(1, 4),
    num_layers=st.integers(1, 3),
    batch_first=st.booleans(),
    unbatched=st.booleans(),
    with_h0=st.booleans(),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_stream_chunks_match_forward(steps, batch, num_layers, batch_first, unbatched, with_h0, cuts, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = MinGRU(3, 5, num_layers, batch_first=batch_first)
    x, h0 = make_input(m, steps, batch, unbatched, with_h0, gen)
    dim = time_dim(m, x)
    bounds = sorted({0, *(min(c, steps) for c in cuts), steps})
    s = m.stream(h0)
    outs = []
    with torch.no_grad():
        for lo, hi in itertools.pairwise(bounds):
            out, state = s(x.narrow(dim, lo, hi - lo))
            assert state is s.state
            outs.append(out)
        y, h_n = m(x, h0)
    torch.testing.assert_close(torch.cat(outs, dim), y, **TOL32)
    torch.testing.assert_close(s.state, h_n, **TOL32)


def test_stream_reset_and_initial_state():
    torch.manual_seed(0)
    m = MinGRU(3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 6, 3)
    h0 = torch.randn(2, 2, 4)
    with torch.no_grad():
        y, h_n = m(x)
        s = m.stream()
        assert s.state is None
        s(x)
        assert not torch.allclose(s(x)[0], y)  # the second call continues from the first's state
        s.reset()
        assert s.state is None
        torch.testing.assert_close(s(x), (y, h_n), **TOL32)
        s.reset(h0)
        torch.testing.assert_close(s(x), m(x, h0), **TOL32)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):  # as forward and nn.GRU
        m.stream(h0)(x[:, :0])


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_matches_forward(unbatched, batch_first):
    torch.manual_seed(2)
    m = MinGRU(3, 4, num_layers=3, batch_first=batch_first)
    xs = torch.randn(7, 3) if unbatched else torch.randn(7, 2, 3)  # time-major steps
    h0 = torch.randn(3, 4) if unbatched else torch.randn(3, 2, 4)
    with torch.no_grad():
        x = xs.transpose(0, 1) if (batch_first and not unbatched) else xs
        y, h_n = m(x, h0)
        state, ys = h0, []
        for x_t in xs.unbind(0):
            y_t, state = m.step(x_t, state)
            assert y_t.shape == (*x_t.shape[:-1], 4) and state.shape == h0.shape
            ys.append(y_t)
        y_steps = torch.stack(ys, time_dim(m, x))
        _, state_first = m.step(xs[0])
    torch.testing.assert_close(y_steps, y, **TOL32)
    torch.testing.assert_close(state, h_n, **TOL32)
    torch.testing.assert_close(state_first, m(x.narrow(time_dim(m, x), 0, 1))[1], **TOL32)


def test_step_checks():
    m = MinGRU(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"MinGRU\.step: Expected input to be 1D or 2D, got 3D instead"):
        m.step(torch.randn(1, 2, 3))
    with pytest.raises(RuntimeError, match="For unbatched 1-D input, hx should also be 2-D but got 3-D tensor"):
        m.step(torch.randn(3), torch.randn(2, 1, 4))
    with pytest.raises(RuntimeError, match="For batched 2-D input, hx should also be 3-D but got 2-D tensor"):
        m.step(torch.randn(5, 3), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 5, 4\), got \[2, 6, 4\]"):
        m.step(torch.randn(5, 3), torch.randn(2, 6, 4))
    with pytest.raises(RuntimeError, match=r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 2"):
        m.step(torch.randn(5, 2))


# ---------------------------------------------------------------- shapes and errors, as torch.nn.GRU


def assert_same_error(ours, theirs):
    """Both calls raise; ours has torch's exception type and its message (GRU -> MinGRU renamed) inside."""
    with pytest.raises(Exception) as torch_err:
        theirs()
    with pytest.raises(Exception) as our_err:
        ours()
    assert type(our_err.value) is type(torch_err.value)
    assert str(torch_err.value) in str(our_err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": 3.0, "hidden_size": 4},
        {"input_size": 3, "hidden_size": 4.0},
        {"input_size": 0, "hidden_size": 4},
        {"input_size": -1, "hidden_size": 4},
        {"input_size": 3, "hidden_size": 0},
        {"input_size": 3, "hidden_size": 4, "num_layers": 0},
        {"input_size": 3, "hidden_size": 4, "dropout": 1.5},
        {"input_size": 3, "hidden_size": 4, "dropout": -0.1},
        {"input_size": 3, "hidden_size": 4, "dropout": True},
        {"input_size": 3, "hidden_size": 4, "bias": "yes"},
        {"input_size": 3, "hidden_size": 4, "batch_first": 1},
    ],
)
def test_constructor_errors_match_gru(kwargs):
    assert_same_error(lambda: MinGRU(**kwargs), lambda: torch.nn.GRU(**kwargs))


def test_constructor_num_layers_type_and_dropout_warning():
    with pytest.raises(TypeError):
        torch.nn.GRU(3, 4, num_layers=1.5)
    with pytest.raises(TypeError, match="num_layers should be of type int, got: float"):
        MinGRU(3, 4, num_layers=1.5)
    for cls in (torch.nn.GRU, MinGRU):
        with pytest.warns(UserWarning, match="dropout option adds dropout after all but last recurrent layer"):
            cls(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MinGRU(3, 4, num_layers=2, dropout=0.5)


@pytest.mark.parametrize(
    ("x_shape", "h_shape", "batch_first", "x_dtype", "h_dtype"),
    [
        ((5, 2, 7), None, False, None, None),  # input.size(-1) must be equal to input_size
        ((5, 7), None, False, None, None),
        ((5, 2, 3, 1), None, False, None, None),  # Expected input to be 2D or 3D, got 4D
        ((3,), None, False, None, None),
        ((5, 2, 3), (2, 2, 4), False, None, None),  # Expected hidden size (1, 2, 4), got [2, 2, 4]
        ((5, 2, 3), (1, 5, 4), False, None, None),
        ((2, 5, 3), (1, 5, 4), True, None, None),
        ((5, 2, 3), (1, 2, 6), False, None, None),
        ((5, 3), (1, 2, 4), False, None, None),  # For unbatched 2-D input, hx should also be 2-D
        ((5, 3), (2, 4), False, None, None),
        ((5, 2, 3), (1, 4), False, None, None),  # For batched 3-D input, hx should also be 3-D
        ((0, 2, 3), None, False, None, None),  # Expected sequence length to be larger than 0
        ((5, 2, 3), None, False, torch.float64, None),  # input dtype does not match weight dtype
        ((5, 2, 3), (1, 2, 4), False, None, torch.float64),
    ],
)
def test_forward_errors_match_gru(x_shape, h_shape, batch_first, x_dtype, h_dtype):
    ours, theirs = MinGRU(3, 4, batch_first=batch_first), torch.nn.GRU(3, 4, batch_first=batch_first)
    x = torch.randn(x_shape, dtype=x_dtype)
    h0 = None if h_shape is None else torch.randn(h_shape, dtype=h_dtype)
    if h_dtype is not None:  # torch's message comes from its matmul; only the type is comparable
        for module in (ours, theirs):
            with pytest.raises(RuntimeError):
                module(x, h0)
        return
    assert_same_error(lambda: ours(x, h0), lambda: theirs(x, h0))


def test_messages_named_in_the_brief():
    m = MinGRU(3, 4)
    with pytest.raises(ValueError, match=r"^MinGRU: Expected input to be 2D or 3D, got 4D instead$"):
        m(torch.randn(1, 1, 1, 3))
    with pytest.raises(RuntimeError, match=r"^Expected hidden size \(1, 2, 4\), got \[2, 2, 4\] \(argument hx"):
        m(torch.randn(5, 2, 3), torch.randn(2, 2, 4))


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_shapes_match_gru(batch):
    for batch_first in (False, True):
        for unbatched in (False, True):
            kwargs = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "batch_first": batch_first}
            ours, theirs = MinGRU(**kwargs), torch.nn.GRU(**kwargs)
            x, h0 = make_input(ours, 6, batch, unbatched, True, torch.Generator().manual_seed(0))
            for h in (None, h0):
                got = [t.shape for t in ours(x, h)]
                assert got == [t.shape for t in theirs(x, h)]
                assert [t.shape for t in ours.stream(h)(x)] == got


# ---------------------------------------------------------------- parameters, dropout, compile


def test_state_dict_layout_and_init():
    m = MinGRU(3, 16, num_layers=3)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == [
        ("weight_ih_l0", (32, 3)),
        ("bias_ih_l0", (32,)),
        ("weight_ih_l1", (32, 16)),
        ("bias_ih_l1", (32,)),
        ("weight_ih_l2", (32, 16)),
        ("bias_ih_l2", (32,)),
    ]
    assert list(MinGRU(3, 4, num_layers=2, bias=False).state_dict()) == ["weight_ih_l0", "weight_ih_l1"]
    bound = 1 / math.sqrt(16)
    for p in m.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound and p.std() > 0.4 * bound
    m64 = MinGRU(3, 4, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    clone = MinGRU(3, 16, num_layers=3)
    clone.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(clone(x), m(x), atol=0, rtol=0)
    assert repr(MinGRU(3, 4, num_layers=2, batch_first=True, bias=False)) == (
        "MinGRU(3, 4, num_layers=2, bias=False, batch_first=True)"
    )


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(4)
    m = MinGRU(3, 4, num_layers=3, dropout=0.5)
    plain = MinGRU(3, 4, num_layers=3)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(6, 2, 3)
    m.eval()
    torch.testing.assert_close(m(x), plain(x), atol=0, rtol=0)
    m.train()
    assert not torch.allclose(m(x)[0], plain(x)[0])

    # p = 1 zeroes everything entering the last layer, which then sees only its bias; its output is not dropped.
    m1 = MinGRU(3, 4, num_layers=2, dropout=1.0).train()
    y, h_n = m1(x)
    y_zero, _ = reference.mingru_sequential(torch.zeros(6, 2, 4), None, m1.layer_weights(1))
    torch.testing.assert_close(y, y_zero, **TOL32)
    assert (y != 0).all()
    torch.testing.assert_close(h_n[0], m1.eval()(x)[1][0], atol=0, rtol=0)  # the first layer is untouched

    with pytest.warns(UserWarning):
        single = MinGRU(3, 4, dropout=0.9)
    torch.testing.assert_close(single.train()(x), single.eval()(x), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(5)
    m = MinGRU(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3)
    h0 = -torch.rand(2, 2, 4)
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, h0), m(x, h0), **TOL32)
