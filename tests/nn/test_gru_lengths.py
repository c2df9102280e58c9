"""``lengths`` on a padded batch gives exactly what the PackedSequence path gives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grukit


@given(
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    reset_after=st.booleans(),
    layer_norm=st.booleans(),
    as_list=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lengths_equal_packed_sequence(
    lengths, layers, bidirectional, batch_first, reset_after, layer_norm, as_list, seed
):
    torch.manual_seed(seed)
    gru = grukit.GRU(
        3,
        4,
        layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        reset_after=reset_after,
        layer_norm=layer_norm,
        dtype=torch.float64,
    )
    steps, batch = max(lengths) + 1, len(lengths)  # one extra padded step for everybody
    x = torch.randn((batch, steps, 3) if batch_first else (steps, batch, 3), dtype=torch.float64)
    h0 = torch.randn(layers * (1 + bidirectional), batch, 4, dtype=torch.float64)
    lens = torch.tensor(lengths)
    out, h_n = gru(x, h0, lengths=lengths if as_list else lens)
    packed = pack_padded_sequence(x, lens, batch_first=batch_first, enforce_sorted=False)
    packed_out, packed_h = gru(packed, h0)
    expected, _ = pad_packed_sequence(packed_out, batch_first=batch_first, total_length=steps)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, packed_h, atol=1e-12, rtol=0)
    time_dim = 1 if batch_first else 0
    beyond = torch.arange(steps).unsqueeze(1) >= lens.unsqueeze(0)  # (T, B)
    assert torch.all(out.movedim(time_dim, 0)[beyond] == 0)


def test_reverse_direction_starts_at_last_valid_step():
    torch.manual_seed(0)
    gru = grukit.GRU(2, 3, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    padded = torch.cat([x[:4], torch.randn(2, 1, 2, dtype=torch.float64) * 100])
    out, h_n = gru(padded, lengths=torch.tensor([4]))
    alone, alone_h = gru(x[:4])
    torch.testing.assert_close(out[:4], alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, alone_h, atol=1e-12, rtol=0)


def test_unbatched_input_takes_a_scalar_length():
    gru = grukit.GRU(2, 3)
    x = torch.randn(5, 2)
    out, h_n = gru(x, lengths=3)
    assert out.shape == (5, 3) and h_n.shape == (1, 3)
    torch.testing.assert_close(out[:3], gru(x[:3])[0])
    assert torch.all(out[3:] == 0)


def test_zero_length_keeps_the_initial_state():
    gru = grukit.GRU(2, 3)
    h0 = torch.randn(1, 2, 3)
    out, h_n = gru(torch.randn(4, 2, 2), h0, lengths=torch.tensor([0, 4]))
    torch.testing.assert_close(h_n[:, 0], h0[:, 0])
    assert torch.all(out[:, 0] == 0)


@pytest.mark.parametrize(
    "lengths,error,words",
    [
        (torch.tensor([1, 2, 3]), ValueError, "shape \\(batch,\\) = \\(2,\\)"),
        (torch.tensor([1.0, 2.0]), TypeError, "integers"),
        (torch.tensor([1, 9]), ValueError, "lie in \\[0, 5\\]"),
        (torch.tensor([-1, 2]), ValueError, "lie in \\[0, 5\\]"),
    ],
)
def test_bad_lengths_are_named(lengths, error, words):
    with pytest.raises(error, match=words):
        grukit.GRU(2, 3)(torch.randn(5, 2, 2), lengths=lengths)


def test_lengths_with_packed_input_is_refused():
    packed = pack_padded_sequence(torch.randn(3, 2, 2), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="PackedSequence"):
        grukit.GRU(2, 3)(packed, lengths=torch.tensor([3, 2]))
