"""The extensions nn.GRU lacks, each held to the naive equations, plus float64 gradcheck of every combination."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck

import grukit
from grukit.backends import dispatch
from grukit.backends.reference import ReferenceBackend
from tests.nn.naive_gru import naive_direction
from tests.nn.parametrized import doubled_twins


def direction_params(gru: grukit.GRU, layer: int = 0, reverse: bool = False) -> dict[str, torch.Tensor | None]:
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    names.update({s: s for s in ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")})
    return {key: getattr(gru, stem + suffix, None) for key, stem in names.items()}


def perturb_norms(gru: grukit.GRU) -> None:
    """Move layer-norm gains and biases away from 1 and 0 so that a misplaced one shows."""
    with torch.no_grad():
        for name, p in gru.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize(
    "reset_after,layer_norm,bias,reverse,zoneout,use_lengths",
    list(itertools.product([True, False], [False, True], [True, False], [False, True], [0.0, 0.4], [False, True])),
)
def test_eval_forward_matches_naive_equations(reset_after, layer_norm, bias, reverse, zoneout, use_lengths):
    torch.manual_seed(0)
    gru = grukit.GRU(
        3,
        5,
        bias=bias,
        reset_after=reset_after,
        layer_norm=layer_norm,
        reverse=reverse,
        zoneout=zoneout,
        dtype=torch.float64,
    ).eval()
    perturb_norms(gru)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    h0 = torch.randn(1, 4, 5, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1]) if use_lengths else None
    out, h_n = gru(x, h0, lengths=lengths)
    expected, expected_h = naive_direction(
        x,
        h0[0],
        direction_params(gru),
        reset_after=reset_after,
        layer_norm=layer_norm,
        reverse=reverse,
        lengths=lengths,
        zoneout_keep=zoneout if zoneout else None,
    )
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n[0], expected_h, atol=1e-12, rtol=0)


def test_bidirectional_layers_compose_as_reverse_directions():
    torch.manual_seed(1)
    gru = grukit.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False, layer_norm=True, dtype=torch.float64)
    perturb_norms(gru)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h_n = gru(x)
    zeros = torch.zeros(2, 4, dtype=torch.float64)
    kw = {"reset_after": False, "layer_norm": True}
    f0, hf0 = naive_direction(x, zeros, direction_params(gru, 0), **kw)
    b0, hb0 = naive_direction(x, zeros, direction_params(gru, 0, True), reverse=True, **kw)
    mid = torch.cat([f0, b0], -1)
    f1, hf1 = naive_direction(mid, zeros, direction_params(gru, 1), **kw)
    b1, hb1 = naive_direction(mid, zeros, direction_params(gru, 1, True), reverse=True, **kw)
    torch.testing.assert_close(out, torch.cat([f1, b1], -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, torch.stack([hf0, hb0, hf1, hb1]), atol=1e-12, rtol=0)


class SpyBackend(ReferenceBackend):
    """The reference backend, recording what each layer call received."""

    name = "spy"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def gru_layer(self, x, h0, weights, config, lengths=None, masks=None):
        self.calls.append({"x": x, "h0": h0, "weights": weights, "config": config, "masks": masks})
        return super().gru_layer(x, h0, weights, config, lengths, masks)


@pytest.fixture
def spy(monkeypatch):
    backend = SpyBackend()
    monkeypatch.setitem(dispatch._loaders, "spy", (-1, lambda: backend))
    monkeypatch.delitem(dispatch._loaded, "spy", raising=False)
    monkeypatch.setenv("GRUKIT_BACKEND", "spy")
    yield backend
    dispatch._loaded.pop("spy", None)


def test_training_masks_follow_their_definitions(spy):
    torch.manual_seed(0)
    p_zone, p_rec, p_drop = 0.3, 0.4, 0.5
    gru = grukit.GRU(
        4,
        32,
        num_layers=2,
        bidirectional=True,
        zoneout=p_zone,
        recurrent_dropout=p_rec,
        dropconnect=p_drop,
        dtype=torch.float64,
    ).train()
    x = torch.randn(20, 64, 4, dtype=torch.float64)
    gru(x)
    assert len(spy.calls) == 4
    for index, call in enumerate(spy.calls):
        layer, reverse = divmod(index, 2)
        masks, weights = call["masks"], call["weights"]
        rec, zone = masks.recurrent_dropout, masks.zoneout
        assert rec.shape == (64, 32)  # one mask per sequence, shared by every step
        assert set(rec.unique().tolist()) <= {0.0, 1 / (1 - p_rec)}
        assert abs((rec == 0).double().mean().item() - p_rec) < 0.05
        assert zone.shape == (20, 64, 32) and set(zone.unique().tolist()) <= {0.0, 1.0}
        assert abs(zone.mean().item() - p_zone) < 0.03
        w_hh = getattr(gru, f"weight_hh_l{layer}" + ("_reverse" if reverse else ""))
        dropped = weights.w_hh == 0
        assert abs(dropped.double().mean().item() - p_drop) < 0.05
        torch.testing.assert_close(weights.w_hh[~dropped], (w_hh / (1 - p_drop))[~dropped])
        params = direction_params(gru, layer, bool(reverse)) | {"w_hh": weights.w_hh}
        expected, _ = naive_direction(
            call["x"], call["h0"], params, reverse=bool(reverse), zoneout_keep=zone, dropout_mask=rec
        )
        produced = ReferenceBackend().gru_layer(call["x"], call["h0"], weights, call["config"], None, masks)[0]
        torch.testing.assert_close(produced, expected, atol=1e-12, rtol=0)
    first_mask = spy.calls[0]["weights"].w_hh == 0
    gru(x)
    assert not torch.equal(spy.calls[4]["weights"].w_hh == 0, first_mask)  # a new DropConnect mask per call


def test_eval_mode_is_deterministic_and_drops_nothing(spy):
    gru = grukit.GRU(3, 4, recurrent_dropout=0.5, dropconnect=0.5, zoneout=0.2).eval()
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(gru(x)[0], gru(x)[0], atol=0, rtol=0)
    call = spy.calls[0]
    assert call["masks"].recurrent_dropout is None and call["masks"].zoneout is None
    assert call["weights"].w_hh is gru.weight_hh_l0


def test_learn_init_is_used_without_h0_and_learns():
    torch.manual_seed(0)
    gru = grukit.GRU(3, 4, num_layers=2, learn_init=True)
    assert gru.initial_state.shape == (2, 4) and torch.all(gru.initial_state == 0)
    with torch.no_grad():
        gru.initial_state.normal_()
    x = torch.randn(5, 3, 3)
    out, _ = gru(x)
    expected, _ = gru(x, gru.initial_state.detach().unsqueeze(1).expand(2, 3, 4).contiguous())
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert gru.initial_state.grad is not None and gru.initial_state.grad.abs().sum() > 0
    other = torch.randn(2, 3, 4)
    assert not torch.allclose(gru(x, other)[0], out)


def functional_gradcheck(module: torch.nn.Module, x, h0=None, lengths=None, fast_mode: bool = True) -> None:
    """float64 gradcheck of (output, h_n) w.r.t. x, h0 and every parameter; masks re-drawn identically."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    inputs = [x.requires_grad_()] + ([h0.requires_grad_()] if h0 is not None else [])

    def fn(*flat):
        torch.manual_seed(1234)
        state = flat[1] if h0 is not None else None
        weights = dict(zip(names, flat[len(inputs) :], strict=True))
        return torch.func.functional_call(module, weights, (flat[0], state), {"lengths": lengths})

    assert gradcheck(fn, (*inputs, *params), eps=1e-6, atol=1e-7, fast_mode=fast_mode)


@pytest.mark.parametrize(
    "reset_after,layer_norm,bidirectional,use_lengths,training",
    list(itertools.product([True, False], repeat=5)),
)
def test_gradcheck_every_variant_combination(reset_after, layer_norm, bidirectional, use_lengths, training):
    torch.manual_seed(0)
    gru = grukit.GRU(
        3,
        3,
        num_layers=2,
        bidirectional=bidirectional,
        dropout=0.3,
        reset_after=reset_after,
        layer_norm=layer_norm,
        zoneout=0.3,
        recurrent_dropout=0.3,
        dropconnect=0.3,
        learn_init=True,
        batch_first=True,
        dtype=torch.float64,
    ).train(training)
    perturb_norms(gru)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([4, 2]) if use_lengths else None
    h0 = None if training else torch.randn(gru.num_layers * (1 + bidirectional), 2, 3, dtype=torch.float64)
    functional_gradcheck(gru, x, h0, lengths)


def test_full_jacobian_gradcheck_of_everything_at_once():
    """The slow, element-by-element gradcheck on the configuration that switches everything on."""
    torch.manual_seed(0)
    gru = grukit.GRU(
        2,
        2,
        num_layers=2,
        bidirectional=True,
        dropout=0.3,
        reset_after=False,
        layer_norm=True,
        zoneout=0.3,
        recurrent_dropout=0.3,
        dropconnect=0.3,
        learn_init=True,
        dtype=torch.float64,
    ).train()
    perturb_norms(gru)
    functional_gradcheck(gru, torch.randn(3, 2, 2, dtype=torch.float64), None, torch.tensor([3, 1]), fast_mode=False)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
def test_parametrized_and_weight_normed_weights_are_used():
    """Weights that live outside the module's own parameter dict (torch.nn.utils.parametrize, weight_norm's plain
    attributes) are looked up where they live: the forward uses the reparametrized weight, not a stale one."""
    torch.manual_seed(0)
    gru, plain = doubled_twins(lambda: grukit.GRU(5, 6), "weight_hh_l0")
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(gru(x)[0], plain(x)[0])

    normed = torch.nn.utils.weight_norm(grukit.GRU(5, 6), name="weight_ih_l0")
    with torch.no_grad():
        normed.weight_ih_l0_g.mul_(3)  # the hook recomputes weight_ih_l0 from g and v before each forward
    reference = grukit.GRU(5, 6)
    reference.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("weight_ih_l0_")},
                              strict=False)  # fmt: skip
    g, v = normed.weight_ih_l0_g, normed.weight_ih_l0_v
    with torch.no_grad():
        reference.weight_ih_l0.copy_(g * v / v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(normed(x)[0], reference(x)[0])
