"""The sequence classifier: grukit.GRU over the padded sequences (with their lengths), masked pooling, a linear
head giving class logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grukit.nn import GRU


class SequenceClassifier(nn.Module):
    """x (T, B, F) zero-padded, lengths (B,) -> logits (B, C).

    pool "mean": the mean of the last layer's outputs over each sequence's valid steps; "last": the final
    state of each direction (at each sequence's own length for the forward direction).
    """

    def __init__(
        self,
        features: int,
        classes: int,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        layer_norm: bool = False,
        bidirectional: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        self.pool = pool
        self.directions = 2 if bidirectional else 1
        self.gru = GRU(
            features,
            hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            layer_norm=layer_norm,
            bidirectional=bidirectional,
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * self.directions, classes))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        output, h_n = self.gru(x, lengths=lengths)  # output (T, B, D*H), h_n (layers*D, B, H)
        if self.pool == "mean":
            steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
            mask = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1).to(output.dtype)  # (T, B, 1)
            pooled = (output * mask).sum(0) / mask.sum(0).clamp_min(1)
        else:
            pooled = torch.cat(list(h_n[-self.directions :]), dim=-1)
        return self.head(pooled)
