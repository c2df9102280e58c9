"""Sequence encoders for the task networks: one registry that builds ``gru`` (grukit.GRU), ``mingru``
(grukit.nn.MinGRU), ``lstm`` (torch.nn.LSTM) or ``transformer`` (torch.nn.TransformerEncoder) behind one interface:

    encoder = build_encoder("lstm", input_size=5, hidden=32, layers=2, dropout=0.1, bidirectional=True)
    outputs, summary = encoder.encode(x, lengths)  # x (T, B, I) zero-padded; lengths (B,) or None (all T)
    # outputs (T, B, encoder.output_size), zero past each sequence's length; summary (B, encoder.output_size)

``summary`` is what a head reads for the whole sequence: for the recurrent encoders, the last layer's final
state of each direction, concatenated (the forward one at each sequence's own length; a seq2seq decoder can
start from it); for the transformer, its output at each sequence's last valid step.

Each encoder holds its parameters itself, so a network that keeps it as the attribute named after the
architecture (``net.gru``, ``net.lstm``, ...) has state_dict keys ``gru.weight_ih_l0``, ...: the layout of
checkpoints written before this registry existed.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from grukit.errors import ConfigError, did_you_mean
from grukit.nn import GRU, MinGRU

ARCHITECTURES = ("gru", "mingru", "lstm", "transformer")
LABELS = {"gru": "GRU", "mingru": "minGRU", "lstm": "LSTM", "transformer": "Transformer"}


class SequenceEncoder(Protocol):
    """What every encoder of the registry offers (besides being an ``nn.Module``)."""

    output_size: int

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, I), lengths (B,) or None -> (outputs (T, B, output_size), summary (B, output_size))."""
        ...


def check_architecture(name: str, key: str = "model") -> str:
    """``name`` if it is an architecture of the registry, else ConfigError naming ``key`` and the closest one."""
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"bad value for {key}: unknown architecture {name!r}{did_you_mean(name, ARCHITECTURES)}; "
            f"choose from {', '.join(ARCHITECTURES)}"
            + (", or give a trained model's run folder or .safetensors file" if key == "model" else "")
        )
    return name


def build_encoder(
    arch: str,
    input_size: int,
    hidden: int,
    layers: int = 1,
    dropout: float = 0.0,
    layer_norm: bool = False,
    bidirectional: bool = False,
) -> nn.Module:
    """The untrained encoder ``arch`` (see ``ARCHITECTURES``) reading ``input_size`` features per step.

    hidden: state size (transformer: model width); dropout: between recurrent layers (only with layers > 1),
    inside the transformer's layers; layer_norm: grukit.GRU's layer-normalised gates (gru only); bidirectional:
    both directions for the recurrent encoders, attention over the whole sequence (not causal) for the
    transformer. Raises ConfigError for an unknown architecture or an option it does not have.
    """
    check_architecture(arch)
    if layer_norm and arch != "gru":
        raise ConfigError(f"layer_norm=true is a grukit.GRU option; model={arch} has none: drop layer_norm")
    between = dropout if layers > 1 else 0.0
    if arch == "gru":
        return GRUEncoder(
            input_size, hidden, num_layers=layers, dropout=between, bidirectional=bidirectional, layer_norm=layer_norm
        )
    if arch == "lstm":
        return LSTMEncoder(input_size, hidden, num_layers=layers, dropout=between, bidirectional=bidirectional)
    if arch == "mingru":
        return MinGRUEncoder(input_size, hidden, layers, between, bidirectional)
    return TransformerSequenceEncoder(input_size, hidden, layers, dropout, bidirectional)


# ------------------------------------------------------------------------------------------- helpers


def valid_steps(lengths: Tensor | None, steps: int, device: torch.device) -> Tensor | None:
    """(T, B, 1) float mask, 1 at each sequence's valid steps; None when ``lengths`` is None."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=device).unsqueeze(1) < lengths.to(device).unsqueeze(0)).unsqueeze(-1).float()


def last_valid(outputs: Tensor, lengths: Tensor | None) -> Tensor:
    """outputs (T, B, F) -> (B, F): each sequence's output at its last valid step (step T-1 without lengths)."""
    if lengths is None:
        return outputs[-1]
    index = (lengths.to(outputs.device).long() - 1).clamp_min(0)
    return outputs[index, torch.arange(outputs.shape[1], device=outputs.device)]


def reverse_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """x (T, B, F) with each sequence's first ``lengths`` steps reversed (padding stays at the end)."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    count = lengths.to(x.device).long().unsqueeze(0)  # (1, B)
    index = torch.where(steps < count, count - 1 - steps, steps)  # (T, B)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask.to(x.dtype)


def _final_states(h_n: Tensor, directions: int) -> Tensor:
    """h_n (L*D, B, H) -> (B, D*H): the last layer's final state of each direction."""
    return torch.cat(list(h_n[-directions:]), dim=-1)


# ------------------------------------------------------------------------------------------- encoders


class GRUEncoder(GRU):
    """grukit.GRU (every argument of it) with ``encode``; outputs past each length are zero (GRU does that)."""

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, I), lengths (B,) or None -> (outputs (T, B, D*H), summary (B, D*H))."""
        output, h_n = self(x, lengths=lengths)
        return output, _final_states(h_n, 2 if self.bidirectional else 1)


class LSTMEncoder(nn.LSTM):
    """torch.nn.LSTM with ``encode``; sequences with lengths run packed, so each final state is at its length."""

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, I), lengths (B,) or None -> (outputs (T, B, D*H), summary (B, D*H))."""
        if lengths is None:
            output, (h_n, _) = self(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu().long(), enforce_sorted=False)
            output, (h_n, _) = self(packed)
            output, _ = pad_packed_sequence(output, total_length=x.shape[0])
        return output, _final_states(h_n, 2 if self.bidirectional else 1)


class MinGRUEncoder(nn.Module):
    """Stacked MinGRU layers; bidirectional by composition: a second MinGRU per layer reads each sequence
    reversed within its length, and the next layer reads both directions' outputs concatenated.

    Parameters: ``forward_layers.{k}`` (and ``backward_layers.{k}``) are one-layer ``grukit.nn.MinGRU``.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        self.output_size, self.dropout = hidden * directions, dropout
        sizes = [input_size] + [hidden * directions] * (layers - 1)
        self.forward_layers = nn.ModuleList(MinGRU(size, hidden) for size in sizes)
        self.backward_layers = nn.ModuleList(MinGRU(size, hidden) for size in sizes) if bidirectional else None

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, I), lengths (B,) or None -> (outputs (T, B, D*H), summary (B, D*H))."""
        mask = valid_steps(lengths, x.shape[0], x.device)
        for k, layer in enumerate(self.forward_layers):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = [layer(x)[0]]  # causal: the valid steps never see the padding after them
            if self.backward_layers is not None:
                outputs.append(reverse_valid(self.backward_layers[k](reverse_valid(x, lengths))[0], lengths))
            x = _masked(torch.cat(outputs, dim=-1), mask)
        hidden = self.forward_layers[0].hidden_size
        summary = last_valid(x[..., :hidden], lengths)
        if self.backward_layers is not None:  # the backward direction ends at step 0
            summary = torch.cat([summary, x[0, :, hidden:]], dim=-1)
        return x, summary


def sinusoids(steps: int, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(T, 1, size) sinusoidal positional encodings (Vaswani et al. 2017)."""
    position = torch.arange(steps, device=device, dtype=dtype).unsqueeze(1)
    rate = torch.exp(torch.arange(0, size, 2, device=device, dtype=dtype) * (-math.log(10000.0) / size))
    angles = position * rate  # (T, ceil(size / 2))
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :size].unsqueeze(1)


class TransformerSequenceEncoder(nn.Module):
    """A small pre-norm transformer encoder: a linear input projection to ``hidden``, sinusoidal positions,
    ``layers`` self-attention layers (4, 2 or 1 heads: the most that divide ``hidden``; feed-forward 2*hidden,
    GELU), a final LayerNorm. Causal attention unless ``bidirectional``; padded steps are never attended to.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool) -> None:
        super().__init__()
        self.output_size, self.bidirectional = hidden, bidirectional
        heads = next(h for h in (4, 2, 1) if hidden % h == 0)
        self.project = nn.Linear(input_size, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=dropout, activation="gelu", norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, B, I), lengths (B,) or None -> (outputs (T, B, H), summary (B, H): the last valid step's)."""
        steps = x.shape[0]
        h = self.project(x) + sinusoids(steps, self.output_size, x.device, x.dtype)
        causal = None
        if not self.bidirectional:
            causal = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)  # True: not attended
        padding = None
        if lengths is not None:
            padding = torch.arange(steps, device=x.device).unsqueeze(0) >= lengths.to(x.device).unsqueeze(1)  # (B, T)
        output = self.layers(h, mask=causal, src_key_padding_mask=padding)
        output = _masked(output, valid_steps(lengths, steps, x.device))
        return output, last_valid(output, lengths)
