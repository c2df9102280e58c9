"""Decoding a trained ``Seq2Seq``: greedy (the most likely character at each step) and beam search, both batched,
and the model's log-probability of given outputs (to score and compare decodings)."""

from __future__ import annotations

import torch
from torch import Tensor

from grukit.tasks.seq2seq.data import BOS, EOS, PAD
from grukit.tasks.seq2seq.model import Seq2Seq


@torch.no_grad()
def greedy(net: Seq2Seq, source: Tensor, lengths: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """source (S, B), lengths (B,) -> (ids (B, T) ending in EOS then PAD, log-probs (B,), attention (B, T, S)).

    At most ``steps`` characters (EOS included); stops early once every output has ended."""
    memory, h = net.encode(source, lengths)
    batch = source.shape[1]
    token = torch.full((1, batch), BOS, dtype=torch.long, device=source.device)
    done = torch.zeros(batch, dtype=torch.bool, device=source.device)
    score = torch.zeros(batch, device=source.device)
    ids, weights = [], []
    for _ in range(steps):
        logits, h, attention = net.decode(token, h, memory)
        logp = torch.log_softmax(logits[0], dim=-1)
        best = logp.argmax(-1)
        score += torch.where(done, 0.0, logp.gather(1, best[:, None])[:, 0])
        best = torch.where(done, PAD, best)
        ids.append(best)
        weights.append(attention[0])
        done |= best == EOS
        if done.all():
            break
        token = best.unsqueeze(0)
    return torch.stack(ids, 1), score, torch.stack(weights, 1)


@torch.no_grad()
def beam_search(net: Seq2Seq, source: Tensor, lengths: Tensor, steps: int, beam: int) -> tuple[Tensor, Tensor]:
    """source (S, B), lengths (B,) -> (ids (B, T), log-probs (B,)): the highest log-probability output among
    ``beam`` hypotheses kept per source at each step (no length penalty). An ended hypothesis keeps its score
    and competes with the open ones until every kept hypothesis has ended or ``steps`` is reached."""
    memory, h = net.encode(source, lengths)
    batch, device = source.shape[1], source.device
    memory = memory.repeat(beam)
    h = h.repeat_interleave(beam, dim=1)  # (L, B * K, H)
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one open hypothesis (BOS) per source at the start
    done = torch.zeros(batch, beam, dtype=torch.bool, device=device)
    token = torch.full((1, batch * beam), BOS, dtype=torch.long, device=device)
    chosen, parents = [], []
    for _ in range(steps):
        logits, h, _ = net.decode(token, h, memory)
        logp = torch.log_softmax(logits[0], dim=-1).view(batch, beam, -1)
        vocab = logp.shape[-1]
        ended = torch.full_like(logp, float("-inf"))
        ended[..., PAD] = 0.0  # an ended hypothesis continues with PAD at no cost
        logp = torch.where(done.unsqueeze(-1), ended, logp)
        scores, flat = (scores.unsqueeze(-1) + logp).view(batch, -1).topk(beam, dim=-1)
        parent, token_id = flat // vocab, flat % vocab
        done = done.gather(1, parent) | (token_id == EOS) | scores.isneginf()  # -inf: fewer candidates than beam
        rows = (parent + torch.arange(batch, device=device).unsqueeze(1) * beam).view(-1)
        h = h[:, rows]
        chosen.append(token_id)
        parents.append(parent)
        if done.all():
            break
        token = token_id.view(1, -1)
    best = scores.argmax(-1)  # (B,)
    out, k = [], best
    for token_id, parent in zip(reversed(chosen), reversed(parents), strict=True):
        out.append(token_id.gather(1, k[:, None])[:, 0])
        k = parent.gather(1, k[:, None])[:, 0]
    return torch.stack(out[::-1], 1), scores.gather(1, best[:, None])[:, 0]


@torch.no_grad()
def log_prob(net: Seq2Seq, source: Tensor, lengths: Tensor, outputs: Tensor) -> Tensor:
    """The model's log-probability of ``outputs`` (B, T) ids (up to and including their first EOS; PAD after it)
    given the sources: (B,)."""
    inputs = torch.cat([torch.full_like(outputs[:, :1], BOS), outputs[:, :-1]], dim=1).t()
    logp = torch.log_softmax(net(source, lengths, inputs), dim=-1)  # (T, B, V)
    picked = logp.gather(2, outputs.t().unsqueeze(-1))[..., 0]
    return (picked * (outputs.t() != PAD)).sum(0)
