"""The sequence classifier: a sequence encoder (grukit.GRU by default; see ``grukit.tasks.encoders``) over the
padded sequences (with their lengths), masked pooling, a linear head giving class logits."""

from __future__ import annotations

from torch import Tensor, nn

from grukit.tasks.encoders import build_encoder, valid_steps


class SequenceClassifier(nn.Module):
    """x (T, B, F) zero-padded, lengths (B,) -> logits (B, C).

    pool "mean": the mean of the last layer's outputs over each sequence's valid steps; "last": the encoder's
    summary (recurrent: the final state of each direction, the forward one at each sequence's own length).
    The encoder ``arch`` is the attribute of that name (``net.gru``: state_dict keys ``gru.*`` and ``head.*``).
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
        arch: str = "gru",
    ) -> None:
        super().__init__()
        self.pool, self.arch = pool, arch
        self.add_module(arch, build_encoder(arch, features, hidden, layers, dropout, layer_norm, bidirectional))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.output_size, classes))

    @property
    def encoder(self) -> nn.Module:
        """The sequence encoder (``grukit.tasks.encoders``)."""
        return getattr(self, self.arch)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        output, summary = self.encoder.encode(x, lengths)  # output (T, B, D*H), summary (B, D*H)
        if self.pool == "mean":
            mask = valid_steps(lengths, x.shape[0], x.device).to(output.dtype)  # (T, B, 1)
            return self.head((output * mask).sum(0) / mask.sum(0).clamp_min(1))
        return self.head(summary)
