"""``GRUCell``: an exact drop-in for ``torch.nn.GRUCell``, with the equation form and layer norm of ``GRU``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from operator import is_not

import torch
from torch import Tensor, nn

from grukit.backends import dispatch
from grukit.backends.contract import GRUConfig, GRUWeights, config_of
from grukit.backends.dispatch import gru_backend
from grukit.nn.checks import check_sizes
from grukit.nn.params import parameter

_LN_NAMES = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")


class GRUCell(nn.Module):
    """One GRU step with torch.nn.GRUCell's arguments, parameters and shapes.

    input: (B, I) or unbatched (I,); hx: (B, H) / (H,) or None (zeros) -> h': (B, H) / (H,).
    Keyword-only extensions: ``reset_after=False`` (Cho et al. 2014 form) and ``layer_norm=True``
    (per-gate layer norm, parameters ``ln_ih_weight`` ... of shape (3H,)), as in ``grukit.GRU``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        check_sizes(input_size, hidden_size, 1)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.reset_after = bool(reset_after)
        self.layer_norm = bool(layer_norm)
        factory = {"device": device, "dtype": dtype}
        gates = 3 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if layer_norm:
            for name in _LN_NAMES:
                self.register_parameter(name, nn.Parameter(torch.empty(gates, **factory)))
        self._stepper: tuple | None = None  # see _fused_step
        self.reset_parameters()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_stepper", None)  # a native handle bound to this object's parameters: rebuilt on the next call
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._stepper = None

    def reset_parameters(self) -> None:
        """torch.nn.GRUCell's U(-1/√H, 1/√H) in the same order; layer-norm gains 1 and biases 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("ln_"):
                    param.fill_(1.0 if "_weight" in name else 0.0)
                else:
                    nn.init.uniform_(param, -bound, bound)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if not self.reset_after:
            text += ", reset_after=False"
        if self.layer_norm:
            text += ", layer_norm=True"
        return text

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """input: (B, I) or (I,); hx: (B, H), (H,) or None -> (B, H) or (H,)."""
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() != input.dim():
            raise RuntimeError(
                f"GRUCell: for {input.dim()}-D input, hx should also be {input.dim()}-D but got {hx.dim()}-D tensor "
                "(argument hx: shape (batch, hidden_size), or (hidden_size,) for unbatched input)"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if x.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {x.size(1)} expected {self.input_size} "
                "(argument input: shape (batch, input_size))"
            )
        if hx is None:
            h = x.new_zeros(x.size(0), self.hidden_size)
        else:
            h = hx if batched else hx.unsqueeze(0)
            if h.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden0 has inconsistent hidden_size: got {h.size(1)}, expected {self.hidden_size} "
                    "(argument hx: shape (batch, hidden_size))"
                )
            if h.size(0) != x.size(0):
                raise RuntimeError(
                    f"Input batch size {x.size(0)} doesn't match hidden0 batch size {h.size(0)} "
                    "(arguments input and hx must hold the same batch)"
                )
        if not self.training and not torch.compiler.is_compiling():
            h_new = self._fused_step(x, h)
            if h_new is not None:
                return h_new if batched else h_new.squeeze(0)
        config = config_of(reset_after=self.reset_after, layer_norm=self.layer_norm, training=self.training)
        sequence = x.unsqueeze(0)
        _, h_new = gru_backend(sequence, config, None).gru_layer(sequence, h, self._weights(), config)
        return h_new if batched else h_new.squeeze(0)

    def _fused_step(self, x: Tensor, h: Tensor) -> Tensor | None:
        """An eval call that records no autograd, x: (B, I), h: (B, H) -> (B, H), through the backend's fused stepper
        (``make_stepper``: the cpu backend's, weights packed once), bound on first use and again after a parameter is
        replaced or modified in place, a module setting changes, or dispatch would pick another backend; None hands
        the call to the layer path (no such backend, autograd to record, another dtype: its checks and errors)."""
        values = tuple(self._parameters.values())
        weight = values[0]
        if x.dtype != weight.dtype or h.dtype != weight.dtype or x.device != weight.device:
            return None
        if torch.is_grad_enabled() and (
            x.requires_grad or h.requires_grad or any(p is not None and p.requires_grad for p in values)
        ):
            return None
        head = (dispatch.GENERATION[0], os.environ.get(dispatch.ENV_VAR), self.reset_after, self.layer_norm)
        for _ in range(2):  # a stale binding (a weight written in place) is rebound once
            cached = self._stepper
            if (
                cached is None
                or cached[0] != head
                or len(cached[1]) != len(values)
                or any(map(is_not, cached[1], values))
            ):
                self._stepper = cached = (head, values, self._bind_stepper(x))
            step = cached[2]
            if step is None:
                return None
            result = step(x, h.unsqueeze(0))
            if result is not None:
                return result[0]
            self._stepper = None
        return None

    def _bind_stepper(self, x: Tensor) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | None] | None:
        """The fused stepper of the backend dispatch picks for x (B, I), bound to the current weights, or None."""
        config = GRUConfig(reset_after=self.reset_after, layer_norm=self.layer_norm)
        make = getattr(gru_backend(x.unsqueeze(0), config, None), "make_stepper", None)
        if make is None:
            return None
        return make([self._weights()], config, [p for p in self._parameters.values() if p is not None], False)

    def _weights(self) -> GRUWeights:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (_LN_NAMES if self.layer_norm else ())
        return GRUWeights(*(parameter(self, name) for name in names))
