"""The forecast network: a sequence encoder (GRU by default; see ``grukit.tasks.encoders``) over season-sized
blocks of the past and a head that outputs quantiles of the whole horizon at once, as corrections to the
seasonal-naive forecast (all in per-window normalised units).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grukit.tasks.encoders import build_encoder


class SeasonBlockForecaster(nn.Module):
    """An encoder over the past, one step per season block, plus an MLP head that sees what is known about the
    future. The encoder ``arch`` (gru, mingru, lstm, transformer: causal) is the attribute of that name
    (``net.gru``), so a gru network's state_dict keys are ``gru.*``, ``head.*`` and ``quantile_offsets``.

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
        arch: str = "gru",
    ) -> None:
        super().__init__()
        self.horizon, self.n_quantiles, self.arch = horizon, n_quantiles, arch
        self.add_module(arch, build_encoder(arch, step_features, hidden, layers, dropout, layer_norm))
        self.head = nn.Sequential(
            nn.Linear(self.encoder.output_size + future_features, 2 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, horizon * n_quantiles),
        )
        # Per-quantile shifts set after training by calibrate() (0 while training), saved with the weights.
        self.register_buffer("quantile_offsets", torch.zeros(n_quantiles))

    @property
    def encoder(self) -> nn.Module:
        """The sequence encoder (``grukit.tasks.encoders``)."""
        return getattr(self, self.arch)

    def forward(self, past: Tensor, future: Tensor, base: Tensor) -> Tensor:
        _, summary = self.encoder.encode(past)  # summary: (B, hidden), the last layer's final state
        out = self.head(torch.cat([summary, future], dim=-1))
        return base.unsqueeze(-1) + out.view(-1, self.horizon, self.n_quantiles) + self.quantile_offsets


def sorted_quantiles(output: Tensor) -> Tensor:
    """(B, H, Q) quantile outputs sorted along Q, so that quantiles never cross (monotone rearrangement)."""
    return output.sort(dim=-1).values


def pinball_loss(output: Tensor, target: Tensor, quantiles: Tensor) -> Tensor:
    """Mean pinball (quantile) loss. output (B, H, Q), target (B, H), quantiles (Q,) -> scalar."""
    error = target.unsqueeze(-1) - output
    return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()
