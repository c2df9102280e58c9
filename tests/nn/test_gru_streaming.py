"""Streaming: ``step`` and ``stream`` concatenate to exactly one forward pass."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import grukit


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
