"""The encoder registry (grukit.tasks.encoders) inside both task networks: every architecture builds, trains a
step, round-trips through a checkpoint, ignores padding; the gru path keeps its old state_dict keys."""

from __future__ import annotations

import pytest
import torch

from grukit.errors import ConfigError
from grukit.tasks.classify.model import SequenceClassifier
from grukit.tasks.encoders import ARCHITECTURES, build_encoder
from grukit.tasks.forecast.model import SeasonBlockForecaster
from grukit.workflow.checkpoints import load_checkpoint, save_checkpoint
from grukit.workflow.config import parse_args

LENGTHS = torch.tensor([9, 5, 3, 1])


def forecaster(arch: str) -> SeasonBlockForecaster:
    return SeasonBlockForecaster(5, 3, horizon=6, n_quantiles=3, hidden=8, layers=2, dropout=0.1, arch=arch)


def classifier(arch: str, bidirectional: bool = True, pool: str = "mean") -> SequenceClassifier:
    return SequenceClassifier(2, 3, hidden=8, layers=2, dropout=0.1, bidirectional=bidirectional, pool=pool, arch=arch)


def forecast_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(7, 4, 5), torch.randn(4, 3), torch.randn(4, 6)


def padded_sequences() -> torch.Tensor:
    """(9, 4, 2), zero past LENGTHS."""
    x = torch.randn(9, 4, 2)
    return x * (torch.arange(9).unsqueeze(1) < LENGTHS).unsqueeze(-1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_trains_a_step_and_round_trips(arch, tmp_path):
    torch.manual_seed(0)
    for net, inputs, target in (
        (forecaster(arch), forecast_inputs(), torch.randn(4, 6, 3)),
        (classifier(arch), (padded_sequences(), LENGTHS), torch.randn(4, 3)),
    ):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        loss = (net(*inputs) - target).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
        optimizer.step()
        assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert all(k.startswith((f"{arch}.", "head.", "quantile_offsets")) for k in net.state_dict())
        path = tmp_path / f"{type(net).__name__}.safetensors"
        save_checkpoint(path, net.state_dict(), {}, {"config": {"model": arch}})
        tensors, _, meta = load_checkpoint(path)
        fresh = forecaster(meta["config"]["model"]) if len(inputs) == 3 else classifier(meta["config"]["model"])
        fresh.load_state_dict(tensors)
        net.eval(), fresh.eval()
        torch.testing.assert_close(fresh(*inputs), net(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("bidirectional", "pool"), [(False, "last"), (True, "last"), (True, "mean")])
def test_padding_and_truncation_do_not_change_the_logits(arch, bidirectional, pool):
    torch.manual_seed(1)
    net = classifier(arch, bidirectional, pool).eval()
    x = padded_sequences()
    with torch.no_grad():
        logits = net(x, LENGTHS)
        noisy = x + 5 * torch.randn_like(x) * (torch.arange(9).unsqueeze(1) >= LENGTHS).unsqueeze(-1)
        torch.testing.assert_close(net(noisy, LENGTHS), logits)
        alone = net(x[:3, 2:3], LENGTHS[2:3])  # the third sequence (length 3) alone, without padding
    torch.testing.assert_close(alone[0], logits[2], atol=1e-6, rtol=1e-5)


def test_the_gru_path_keeps_its_checkpoint_layout():
    forecast_keys = list(SeasonBlockForecaster(5, 3, 6, 3, hidden=8).state_dict())
    assert forecast_keys == [
        "quantile_offsets",
        *(f"gru.{stem}_l0" for stem in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
        *(f"head.{i}.{kind}" for i in (0, 3) for kind in ("weight", "bias")),
    ]
    classify_keys = list(SequenceClassifier(2, 3, hidden=8, bidirectional=True).state_dict())
    stems = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    gru_keys = [f"gru.{stem}_l0{d}" for d in ("", "_reverse") for stem in stems]
    assert classify_keys == [*gru_keys, "head.1.weight", "head.1.bias"]


def test_unknown_architectures_and_options_are_named():
    with pytest.raises(ConfigError, match=r"model: unknown architecture 'lstn' \(did you mean 'lstm'\?\)"):
        parse_args(["model=lstn"])
    with pytest.raises(ConfigError, match=r"models: unknown architecture 'mingur' \(did you mean 'mingru'\?\)"):
        parse_args(["models=gru,mingur"])
    with pytest.raises(ConfigError, match=r"models: .* is not a comma-separated list of distinct"):
        parse_args(["models=gru,gru"])
    assert parse_args(["models=lstm, gru", "model=runs/forecast/train"]) == {
        "models": ["lstm", "gru"],
        "model": "runs/forecast/train",
    }
    with pytest.raises(ConfigError, match=r"layer_norm=true is a grukit\.GRU option; model=lstm has none"):
        build_encoder("lstm", 3, 8, layer_norm=True)
