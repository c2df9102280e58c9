"""Input checks shared by the recurrent layers, raising the errors torch.nn.GRU raises (same type, same text,
plus which argument to fix)."""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor


def check_rnn_args(
    input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool, dropout: float
) -> float:
    """torch.nn.RNNBase's constructor checks, in its order and with its messages; returns dropout as float."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    for name, flag in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
    check_sizes(input_size, hidden_size, num_layers)
    return float(dropout)


def check_sizes(input_size: int, hidden_size: int, num_layers: int = 1) -> None:
    """The integer sizes: ints (bools pass, as in torch) and greater than zero."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")


def check_probability(name: str, p: float, *, allow_one: bool = True) -> float:
    """A probability argument: a number in [0, 1] (or [0, 1) when p = 1 would divide by zero)."""
    upper_ok = p <= 1 if allow_one else p < 1
    if not isinstance(p, numbers.Number) or isinstance(p, bool) or not (p >= 0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} should be a number in range {interval}, got {p!r}")
    return float(p)


def batch_input(name: str, x: Tensor, hx: Tensor | None, batch_first: bool) -> tuple[Tensor, Tensor | None, bool]:
    """Check the rank of input and hx like torch.nn.GRU and add the batch dimension to unbatched input.

    x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I); hx: (S, B, H) or unbatched (S, H).
    Returns (x, hx, batched) with x and hx batched.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {x.dim()}D instead")
    batched = x.dim() == 3
    if hx is not None:
        if batched and hx.dim() != 3:
            raise RuntimeError(
                f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor "
                "(argument hx: pass shape (num_layers * num_directions, batch, hidden_size))"
            )
        if not batched and hx.dim() != 2:
            raise RuntimeError(
                f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor "
                "(argument hx: pass shape (num_layers * num_directions, hidden_size))"
            )
    if batched:
        return x, hx, True
    return x.unsqueeze(0 if batch_first else 1), None if hx is None else hx.unsqueeze(1), False


def check_sequence(x: Tensor, input_size: int, weight_dtype: torch.dtype) -> None:
    """x: (T, B, I) must have I == input_size, T > 0 and the weights' dtype (torch.nn.GRU's checks)."""
    if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight_dtype}). "
            f"Convert input: input.to({weight_dtype}), or convert model: model.to({x.dtype})"
        )
    if x.shape[0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if x.size(-1) != input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got {x.size(-1)} "
            "(argument input: its last dimension holds the features)"
        )


def check_hidden(hx: Tensor, expected: tuple[int, int, int], dtype: torch.dtype) -> None:
    """hx must have the shape (S, B, H) the layer expects and the input's dtype."""
    if tuple(hx.shape) != expected:
        raise RuntimeError(
            f"Expected hidden size {expected}, got {list(hx.shape)} "
            "(argument hx: shape (num_layers * num_directions, batch, hidden_size))"
        )
    if hx.dtype != dtype:
        raise RuntimeError(f"Expected hx dtype {dtype}, got {hx.dtype} (argument hx: convert it with hx.to({dtype}))")
