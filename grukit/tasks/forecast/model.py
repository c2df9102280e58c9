"""The forecast network: a GRU over season-sized blocks of the past and a head that outputs quantiles of
the whole horizon at once, as corrections to the seasonal-naive forecast (all in per-window normalised units).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grukit.nn.gru import GRU


class SeasonBlockForecaster(nn.Module):
    """GRU over the past, one step per season block, plus an MLP head that sees what is known about the future.

        Inputs (normalised): past (L, B, step_features), time-major, oldest block first; future
        (B, future_features); base (B, H), the seasonal-naive forecast. Output: (B, H, Q) quantiles per step, in
        the order of ``quantiles``: base + head(GRU state, future) + quantile_offsets (the calibration shifts, 0 in
    training). Use ``sorted_quantiles`` for non-crossing ones.
    """

    def __init__(
        self,
        step_features: int,
        future_features: int,
        horizon: int,
        n_quantiles: int,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.horizon, self.n_quantiles = horizon, n_quantiles
        self.gru = GRU(
            step_features, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0, layer_norm=layer_norm
        )
        self.head = nn.Sequential(
            nn.Linear(hidden + future_features, 2 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, horizon * n_quantiles),
        )
        # Per-quantile shifts set after training by calibrate() (0 while training), saved with the weights.
        self.register_buffer("quantile_offsets", torch.zeros(n_quantiles))

    def forward(self, past: Tensor, future: Tensor, base: Tensor) -> Tensor:
        _, h_n = self.gru(past)  # h_n: (layers, B, hidden)
        out = self.head(torch.cat([h_n[-1], future], dim=-1))
        return base.unsqueeze(-1) + out.view(-1, self.horizon, self.n_quantiles) + self.quantile_offsets


def sorted_quantiles(output: Tensor) -> Tensor:
    """(B, H, Q) quantile outputs sorted along Q, so that quantiles never cross (monotone rearrangement)."""
    return output.sort(dim=-1).values


def pinball_loss(output: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean pinball (quantile) loss. output (B, H, Q), target (B, H), quantiles (Q,) -> scalar."""
    error = target.unsqueeze(-1) - output
    return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()
