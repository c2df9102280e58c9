"""MinGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates see only the input.

    z_t = sigmoid(W_z x_t + b_z)
    h~_t = g(W_h x_t + b_h),   g(v) = v + 0.5 for v >= 0, sigmoid(v) otherwise
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

Because no gate depends on h, a whole sequence runs as one parallel scan (``forward``); ``step`` and
``stream`` run step by step for online use. This module holds parameters, argument checks and the
state_dict layout; the recurrence itself is computed by a backend (``grukit.backends``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grukit.backends import dispatch
from grukit.backends.contract import MinGRUWeights
from grukit.nn.checks import batch_input, check_hidden, check_rnn_args, check_sequence
from grukit.nn.streaming import StreamingMixin

__all__ = ["MinGRU"]


class MinGRU(StreamingMixin, nn.Module):
    """A stack of MinGRU layers, shaped like a unidirectional ``torch.nn.GRU``.

    Args:
        input_size: I, features of each input step.
        hidden_size: H, features of the state and of each output step.
        num_layers: L, stacked layers; layer k > 0 takes layer k-1's output.
        bias: whether each layer has ``bias_ih_l{k}``.
        batch_first: inputs and outputs are ``(B, T, ·)`` instead of ``(T, B, ·)`` (states stay ``(L, B, H)``).
        dropout: probability of zeroing each output of every layer but the last, in training only.
        device, dtype: where and how the parameters are created.

    Parameters (per layer k): ``weight_ih_l{k}``: (2H, I_k) with rows [z; h], I_0 = I and I_k = H after;
    ``bias_ih_l{k}``: (2H,) when ``bias``. Both are initialised uniform(-1/sqrt(H), 1/sqrt(H)) like nn.GRU.

    Shapes: x: (T, B, I), or (B, T, I) with ``batch_first``, or (T, I) unbatched; h0 and h_n: (L, B, H),
    or (L, H) unbatched; output: (T, B, H), or (B, T, H) with ``batch_first``, or (T, H) unbatched.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dropout = check_rnn_args(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        factory = {"device": device, "dtype": dtype}
        for k in range(num_layers):
            layer_input = input_size if k == 0 else hidden_size
            weight = nn.Parameter(torch.empty(2 * hidden_size, layer_input, **factory))
            self.register_parameter(f"weight_ih_l{k}", weight)
            if bias:
                self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(2 * hidden_size, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter uniform(-1/sqrt(H), 1/sqrt(H)), as nn.GRU does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, k: int) -> MinGRUWeights:
        """Layer k's weights as the backends take them: weight (2H, I_k), bias (2H,) or None."""
        return MinGRUWeights(getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}") if self.bias else None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The whole sequence at once (log-space parallel scan).

        input: (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched; hx: (L, B, H) or (L, H)
        unbatched, zeros when None -> (output: (T, B, H) / (B, T, H) / (T, H), h_n: (L, B, H) / (L, H)).
        """
        return self._run(input, hx, sequential=False)

    def stream_chunk(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One chunk of a stream (see ``step`` and ``stream``), computed step by step."""
        return self._run(x, state, sequential=True)

    def _run(self, input: Tensor, hx: Tensor | None, sequential: bool) -> tuple[Tensor, Tensor]:
        """Check and lay out input and hx as nn.GRU does, run the layers, undo the layout."""
        x, hx, batched = batch_input("MinGRU", input, hx, self.batch_first)
        if self.batch_first:
            x = x.transpose(0, 1)
        check_sequence(x, self.input_size, self.weight_ih_l0.dtype)
        if hx is not None:
            check_hidden(hx, (self.num_layers, x.shape[1], self.hidden_size), x.dtype)
        finals = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                x = F.dropout(x, self.dropout, training=True)
            h0 = None if hx is None else hx[k]
            x, h_last = dispatch.mingru_backend(x).mingru_layer(x, h0, self.layer_weights(k), sequential=sequential)
            finals.append(h_last)
        output, h_n = x, torch.stack(finals)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            return output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return output, h_n
