"""Wrong input raises torch's error (same type, torch's text inside ours), naming the argument to fix."""

from __future__ import annotations

import warnings

import pytest
import torch

import grukit


def torch_error(fn):
    try:
        fn()
    except Exception as err:
        return err
    raise AssertionError("torch raised nothing")


CASES = {
    # (torch class, grukit class, call, the argument the message must name)
    "feature size": (torch.nn.GRU, grukit.GRU, lambda m: m(torch.randn(5, 2, 7)), "input"),
    "h0 shape": (torch.nn.GRU, grukit.GRU, lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4)), "hx"),
    "rank": (torch.nn.GRU, grukit.GRU, lambda m: m(torch.randn(5, 2, 3, 1)), "GRU"),
    "unbatched input, batched h0": (
        torch.nn.GRU,
        grukit.GRU,
        lambda m: m(torch.randn(5, 3), torch.randn(1, 2, 4)),
        "hx",
    ),
    "batched input, unbatched h0": (
        torch.nn.GRU,
        grukit.GRU,
        lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 4)),
        "hx",
    ),
    "unbatched h0 size": (torch.nn.GRU, grukit.GRU, lambda m: m(torch.randn(5, 3), torch.randn(2, 4)), "hx"),
    "cell feature size": (torch.nn.GRUCell, grukit.GRUCell, lambda m: m(torch.randn(2, 7)), "input"),
    "cell hidden size": (
        torch.nn.GRUCell,
        grukit.GRUCell,
        lambda m: m(torch.randn(2, 3), torch.randn(2, 5)),
        "hx",
    ),
    "cell batch": (torch.nn.GRUCell, grukit.GRUCell, lambda m: m(torch.randn(2, 3), torch.randn(3, 4)), "hx"),
    "cell rank": (torch.nn.GRUCell, grukit.GRUCell, lambda m: m(torch.randn(2, 3, 3)), "GRUCell"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_input_errors_match_torch_and_name_the_argument(case):
    theirs, ours, call, argument = CASES[case]
    expected = torch_error(lambda: call(theirs(3, 4)))
    with pytest.raises(type(expected)) as caught:
        call(ours(3, 4))
    assert str(expected) in str(caught.value)
    assert argument in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"dropout": 1.5}, {"hidden_size": 0}, {"num_layers": 0}, {"hidden_size": 2.5}],
)
def test_constructor_errors_match_torch(kwargs):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    expected = torch_error(lambda: torch.nn.GRU(**args))
    with pytest.raises(type(expected), match=str(expected)[:40].replace("[", "\\[").replace("(", "\\(")):
        grukit.GRU(**args)


def test_non_numeric_dropout_is_named():
    with pytest.raises(ValueError, match="dropout should be a number"):  # torch says "could not convert string"
        grukit.GRU(3, 4, dropout="x")


def test_dropout_warning_matches_torch():
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        torch.nn.GRU(3, 4, dropout=0.5)
    with pytest.warns(UserWarning) as ours:
        grukit.GRU(3, 4, dropout=0.5)
    assert str(ours[0].message) == str(theirs[0].message)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"zoneout": 1.2}, "zoneout"),
        ({"recurrent_dropout": 1.0}, "recurrent_dropout"),
        ({"dropconnect": -0.1}, "dropconnect"),
        ({"reverse": True, "bidirectional": True}, "reverse"),
    ],
)
def test_extension_arguments_are_checked(kwargs, words):
    with pytest.raises(ValueError, match=words):
        grukit.GRU(3, 4, **kwargs)


@pytest.mark.parametrize("x", [torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(0, 2, 3)], ids=["dtype", "empty"])
def test_dtype_mismatch_and_empty_sequence_match_torch(x):
    expected = torch_error(lambda: torch.nn.GRU(3, 4)(x))
    with pytest.raises(type(expected)) as caught:
        grukit.GRU(3, 4)(x)
    assert str(caught.value) == str(expected)
