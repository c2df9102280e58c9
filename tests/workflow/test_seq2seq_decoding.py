"""Greedy and beam-search decoding of the seq2seq network: beam=1 is greedy; beam search returns its outputs'
true log-probabilities and never a less likely output than greedy."""

from __future__ import annotations

import pytest
import torch

from grukit.tasks.seq2seq.data import EOS, PAD, SPECIALS
from grukit.tasks.seq2seq.decoding import beam_search, greedy, log_prob
from grukit.tasks.seq2seq.export import GreedyDecoder
from grukit.tasks.seq2seq.model import Seq2Seq

STEPS = 12


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")


@pytest.fixture(scope="module")
def batch():
    """An untrained (so undecided: many likely outputs) network and 24 random sources of length 3..9."""
    torch.manual_seed(0)
    net = Seq2Seq(SPECIALS + 7, SPECIALS + 5, hidden=16, embed=8).eval()
    lengths = torch.randint(3, 10, (24,))
    source = torch.randint(SPECIALS, SPECIALS + 7, (int(lengths.max()), 24))
    source[torch.arange(source.shape[0]).unsqueeze(1) >= lengths] = PAD
    return net, source, lengths


def test_greedy_scores_are_the_log_probabilities_of_its_outputs(batch):
    net, source, lengths = batch
    ids, scores, attention = greedy(net, source, lengths, STEPS)
    torch.testing.assert_close(log_prob(net, source, lengths, ids), scores)
    assert attention.shape == (24, ids.shape[1], source.shape[0])
    padding = (torch.arange(source.shape[0]) >= lengths.unsqueeze(1)).unsqueeze(1).expand_as(attention)
    assert (attention[padding] == 0).all() and torch.allclose(attention.sum(-1), torch.ones(()))
    ended = (ids == EOS).cumsum(1)
    assert (ids[(ended > 0) & (ids != EOS)] == PAD).all()  # PAD after EOS


def test_beam_one_is_greedy(batch):
    net, source, lengths = batch
    ids, scores, _ = greedy(net, source, lengths, STEPS)
    beam_ids, beam_scores = beam_search(net, source, lengths, STEPS, beam=1)
    assert torch.equal(beam_ids, ids)
    torch.testing.assert_close(beam_scores, scores)


@pytest.mark.parametrize("beam", [3, 8])
def test_beam_search_finds_outputs_at_least_as_likely_as_greedy(batch, beam):
    net, source, lengths = batch
    _, greedy_scores, _ = greedy(net, source, lengths, STEPS)
    ids, scores = beam_search(net, source, lengths, STEPS, beam)
    torch.testing.assert_close(log_prob(net, source, lengths, ids), scores)  # the scores are the model's
    assert (scores >= greedy_scores - 1e-5).all()
    assert (scores > greedy_scores + 1e-3).any()  # an undecided model: beam search finds better outputs


def test_decoding_a_batch_equals_decoding_each_source_alone(batch):
    net, source, lengths = batch
    ids, _ = beam_search(net, source, lengths, STEPS, beam=4)
    for b in (0, 5, 17):
        alone, _ = beam_search(net, source[: lengths[b], b : b + 1], lengths[b : b + 1], STEPS, beam=4)
        assert torch.equal(alone[0], ids[b, : alone.shape[1]])
        assert (ids[b, alone.shape[1] :] == PAD).all()


def test_the_exported_decoder_decodes_like_greedy(batch):
    net, source, lengths = batch
    ids, _, _ = greedy(net, source, lengths, STEPS)
    fixed = GreedyDecoder(net, STEPS)(source.t().contiguous(), lengths)  # batch first, every step
    assert fixed.shape == (24, STEPS)
    assert torch.equal(fixed[:, : ids.shape[1]], ids) and (fixed[:, ids.shape[1] :] == PAD).all()
