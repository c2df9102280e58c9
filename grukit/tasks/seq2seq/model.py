"""The encoder-decoder: a bidirectional sequence encoder (``model``: grukit.GRU by default, or minGRU, LSTM or a
transformer from ``grukit.tasks.encoders``) reads the source characters (with their lengths); a grukit.GRU decoder,
started from the encoder's final states, writes the target one character at a time, attending over the encoder
outputs with Luong's "general" attention (Luong, Pham, Manning 2015): after each decoder step,
scores = h_t · W_a m_s over the source steps s, context c_t = softmax(scores) · m, and the output
softmax(W_o tanh(W_c [h_t; c_t])). Because the attention comes after the recurrence, teacher-forced training
runs the decoder GRU over the whole target in one call.

Only the encoder varies with ``model``; the embeddings, the GRU decoder, the attention and the output layer are
the same for every architecture. The decoder's initial state: for gru, each layer's from that encoder layer's two
final states; for the others, every layer's from the encoder's summary (the last layer's final states of both
directions; the transformer's output at the last source character).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grukit.nn import GRU
from grukit.tasks.encoders import build_encoder
from grukit.tasks.seq2seq.data import PAD


@dataclass
class Memory:
    """The encoded source: outputs (S, B, E) (E: the encoder's output size, 2H for the recurrent ones), their
    attention keys (S, B, H), mask (S, B) True on real steps."""

    outputs: Tensor
    keys: Tensor
    mask: Tensor

    def repeat(self, times: int) -> Memory:
        """Each batch entry repeated ``times`` times in a row (for beam search): batch B -> B * times."""
        return Memory(*(t.repeat_interleave(times, dim=1) for t in (self.outputs, self.keys, self.mask)))


class Seq2Seq(nn.Module):
    """source (S, B) ids, lengths (B,), decoder inputs (T, B) ids (BOS + target) -> logits (T, B, V_target).

    Characters are embedded in ``embed`` units; the encoder ``arch`` (see ``grukit.tasks.encoders``; the attribute
    ``encoder`` whatever the architecture, so gru's state_dict keys are ``encoder.weight_ih_l0``, ...) has
    ``hidden`` units per direction (transformer: width ``hidden``), the decoder ``hidden``.
    """

    def __init__(
        self,
        source_vocab: int,
        target_vocab: int,
        hidden: int = 128,
        embed: int = 32,
        layers: int = 1,
        dropout: float = 0.0,
        layer_norm: bool = False,
        arch: str = "gru",
    ) -> None:
        super().__init__()
        self.layers, self.hidden, self.arch = layers, hidden, arch
        between = dropout if layers > 1 else 0.0
        self.source_embed = nn.Embedding(source_vocab, embed, padding_idx=PAD)
        self.target_embed = nn.Embedding(target_vocab, embed, padding_idx=PAD)
        self.encoder = build_encoder(arch, embed, hidden, layers, dropout, layer_norm, bidirectional=True)
        size = self.encoder.output_size
        self.bridge = nn.Linear(size, hidden)
        self.decoder = GRU(embed, hidden, layers, dropout=between, layer_norm=layer_norm)
        self.attend = nn.Linear(size, hidden, bias=False)
        self.combine = nn.Linear(hidden + size, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, target_vocab)

    def encode(self, source: Tensor, lengths: Tensor) -> tuple[Memory, Tensor]:
        """source (S, B), lengths (B,) -> (memory, decoder initial state (L, B, H))."""
        embedded = self.drop(self.source_embed(source))
        if self.arch == "gru":  # each decoder layer starts from the same encoder layer's final states
            outputs, h_n = self.encoder(embedded, lengths=lengths)  # (S, B, 2H), (2L, B, H)
            both = h_n.view(self.layers, 2, h_n.shape[1], self.hidden)
            h0 = torch.tanh(self.bridge(torch.cat([both[:, 0], both[:, 1]], dim=-1)))
        else:  # every decoder layer starts from the encoder's summary (B, E)
            outputs, summary = self.encoder.encode(embedded, lengths)  # (S, B, E), (B, E)
            h0 = torch.tanh(self.bridge(summary)).expand(self.layers, -1, -1).contiguous()
        steps = torch.arange(source.shape[0], device=source.device).unsqueeze(1)
        mask = steps < lengths.to(source.device).unsqueeze(0)
        return Memory(outputs, self.attend(outputs), mask), h0

    def attention(self, states: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        """states (T, B, H) -> (attentional states (T, B, H), weights (T, B, S))."""
        scores = torch.einsum("tbh,sbh->tbs", states, memory.keys)
        scores = scores.masked_fill(~memory.mask.t().unsqueeze(0), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.einsum("tbs,sbh->tbh", weights, memory.outputs)
        return torch.tanh(self.combine(torch.cat([states, context], dim=-1))), weights

    def decode(self, inputs: Tensor, h: Tensor, memory: Memory) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder inputs (T, B) ids from state h (L, B, H) -> (logits (T, B, V), h (L, B, H), weights (T, B, S))."""
        states, h = self.decoder(self.drop(self.target_embed(inputs)), h)
        attended, weights = self.attention(states, memory)
        return self.out(self.drop(attended)), h, weights

    def forward(self, source: Tensor, lengths: Tensor, inputs: Tensor) -> Tensor:
        memory, h0 = self.encode(source, lengths)
        return self.decode(inputs, h0, memory)[0]
