"""grukit.GRU against torch.nn.GRU: same parameters, same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import grukit

# float32: the backend contract's 1e-5 (gradients sum over T*B terms in another order than torch's kernels).
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def pair(dtype: torch.dtype = torch.float32, **args: object) -> tuple[grukit.GRU, torch.nn.GRU]:
    """A torch.nn.GRU and a grukit.GRU holding the same weights."""
    reference = torch.nn.GRU(**args, dtype=dtype)
    ours = grukit.GRU(**args, dtype=dtype)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def assert_close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def grads(module: torch.nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.grad for t in tensors] + [p.grad for p in module.parameters()]


configs = st.fixed_dictionaries(
    {
        "input_size": st.integers(1, 7),
        "hidden_size": st.integers(1, 7),
        "num_layers": st.integers(1, 3),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
    }
)


@given(
    args=configs,
    steps=st.integers(1, 9),
    batch=st.integers(1, 4),
    unbatched=st.booleans(),
    with_h0=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    dropout=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_outputs_and_gradients_match_torch(args, steps, batch, unbatched, with_h0, dtype, dropout, seed):
    torch.manual_seed(seed)
    if args["num_layers"] == 1:
        dropout = 0.0
    ours, reference = pair(dtype, dropout=dropout, **args)
    ours.eval()
    reference.eval()
    layers = args["num_layers"] * (2 if args["bidirectional"] else 1)
    shape = (steps, batch, args["input_size"])
    if args["batch_first"]:
        shape = (batch, steps, args["input_size"])
    x = torch.randn((steps, args["input_size"]) if unbatched else shape, dtype=dtype)
    h0 = torch.randn((layers, args["hidden_size"]) if unbatched else (layers, batch, args["hidden_size"]), dtype=dtype)
    results = []
    for module in (ours, reference):
        xi = x.clone().requires_grad_()
        hi = h0.clone().requires_grad_() if with_h0 else None
        out, h_n = module(xi, hi)
        ((out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum() + h_n.square().sum()).backward()
        results.append([out, h_n, *grads(module, xi, *([hi] if with_h0 else []))])
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, dtype)


@given(
    args=configs,
    lengths=st.lists(st.integers(1, 8), min_size=1, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_packed_sequences_with_unsorted_lengths_match_torch(args, lengths, dtype, seed):
    torch.manual_seed(seed)
    ours, reference = pair(dtype, **{**args, "batch_first": False})
    steps, batch = max(lengths), len(lengths)
    layers = args["num_layers"] * (2 if args["bidirectional"] else 1)
    x = torch.randn(steps, batch, args["input_size"], dtype=dtype)
    h0 = torch.randn(layers, batch, args["hidden_size"], dtype=dtype)
    results = []
    for module in (ours, reference):
        xi, hi = x.clone().requires_grad_(), h0.clone().requires_grad_()
        packed = pack_padded_sequence(xi, torch.tensor(lengths), enforce_sorted=False)
        out, h_n = module(packed, hi)
        assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
        torch.testing.assert_close(out.batch_sizes, packed.batch_sizes)
        torch.testing.assert_close(out.sorted_indices, packed.sorted_indices)
        (out.data.sin().sum() + h_n.square().sum()).backward()
        results.append([out.data, h_n, *grads(module, xi, hi)])
    for a, b in zip(*results, strict=True):
        assert_close(a, b, dtype)


def test_same_seed_gives_torch_initialisation():
    for args in ({"num_layers": 2, "bidirectional": True}, {"bias": False, "num_layers": 3}):
        torch.manual_seed(7)
        ours = grukit.GRU(5, 6, **args)
        torch.manual_seed(7)
        reference = torch.nn.GRU(5, 6, **args)
        names = [n for n, _ in ours.named_parameters()]
        assert names == [n for n, _ in reference.named_parameters()]
        for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b)


def test_state_dicts_load_both_ways_strictly():
    ours, reference = pair(torch.float32, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    fresh_torch = torch.nn.GRU(3, 4, 2, bidirectional=True)
    fresh_torch.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(5, 2, 3)
    assert torch.allclose(fresh_torch(x)[0], ours(x)[0], atol=1e-6)
    assert list(ours.state_dict()) == list(reference.state_dict())


def test_from_torch_and_to_torch_round_trip():
    reference = torch.nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True, dtype=torch.float64).eval()
    ours = grukit.GRU.from_torch(reference)
    assert ours.batch_first and ours.bidirectional and ours.num_layers == 2
    assert ours.weight_ih_l0.dtype == torch.float64 and not ours.training
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], atol=1e-12, rtol=0)
    back = ours.to_torch()
    assert isinstance(back, torch.nn.GRU)
    torch.testing.assert_close(back(x)[0], reference(x)[0], atol=0, rtol=0)


def test_to_torch_refuses_what_nn_gru_cannot_express():
    for kwargs, word in (({"reset_after": False}, "reset_after"), ({"layer_norm": True}, "layer_norm")):
        with pytest.raises(ValueError, match=word):
            grukit.GRU(2, 3, **kwargs).to_torch()
    with pytest.raises(TypeError, match=r"torch\.nn\.GRU"):
        grukit.GRU.from_torch(torch.nn.LSTM(2, 3))


def test_attributes_and_all_weights_match_torch():
    ours, reference = pair(torch.float32, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    for name in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "proj_size"):
        assert getattr(ours, name) == getattr(reference, name)
    for mine, theirs in zip(ours.all_weights, reference.all_weights, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b)
    ours.flatten_parameters()
    assert repr(ours) == repr(reference)
