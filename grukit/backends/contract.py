"""The backend contract: what every backend receives and returns.

A backend computes one recurrent layer in one direction. The layers in ``grukit.nn`` compose layers and
directions, sample every random mask (so all backends see the same randomness) and pass them in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class GRUConfig:
    """Static description of one GRU layer call (hashable, so backends may specialise on it).

    reset_after: True is PyTorch/cuDNN's form ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``;
        False is Cho et al. 2014's ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
    reverse: run from the last valid step to the first (outputs stay in input time order).
    layer_norm: per-gate layer normalisation of ``W_ih x`` and of the recurrent product, before biases.
    zoneout: probability that a unit keeps its previous value (a mask in training, the expectation in eval).
    recurrent_dropout: whether a recurrent-dropout mask comes with the call (training with p > 0).
    training: whether the module is in training mode.
    """

    reset_after: bool = True
    reverse: bool = False
    layer_norm: bool = False
    zoneout: float = 0.0
    recurrent_dropout: bool = False
    training: bool = False


_cached_config = functools.lru_cache(maxsize=256)(GRUConfig)  # one frozen config per distinct call


def config_of(*fields: object, **named: object) -> GRUConfig:
    """``GRUConfig(*fields, **named)``, the same object for the same arguments (a layer call builds no new one per
    step), a fresh one while torch.compile traces (dynamo cannot trace the cache)."""
    return GRUConfig(*fields, **named) if torch.compiler.is_compiling() else _cached_config(*fields, **named)


class GRUWeights(NamedTuple):
    """Weights of one layer and direction, in PyTorch gate order (r, z, n).

    w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,) or None.
    ln_*: (3H,) gains and biases of the per-gate layer norms, or None without layer_norm.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None = None
    b_hh: Tensor | None = None
    ln_ih_weight: Tensor | None = None
    ln_ih_bias: Tensor | None = None
    ln_hh_weight: Tensor | None = None
    ln_hh_bias: Tensor | None = None


class GRUMasks(NamedTuple):
    """Random masks sampled by the layer for one training call (None when unused).

    recurrent_dropout: (B, H), already scaled by 1/(1-p); multiplies the state entering the recurrent
        product, the same mask at every time step.
    zoneout: (T, B, H) of 0/1 in input time order; 1 keeps the unit's previous value.
    """

    recurrent_dropout: Tensor | None = None
    zoneout: Tensor | None = None


NO_MASKS = GRUMasks()


class MinGRUWeights(NamedTuple):
    """Weights of one MinGRU layer: weight (2H, I) with rows [z; h], bias (2H,) or None."""

    weight: Tensor
    bias: Tensor | None = None


class Backend(Protocol):
    """What dispatch needs from a backend.

    ``supports_*`` returns None when the backend can serve the call, else a short reason naming what it
    lacks (used in the error of a forced backend).
    """

    name: str

    def supports_gru(self, x: Tensor, config: GRUConfig, lengths: Tensor | None) -> str | None: ...

    def gru_layer(
        self,
        x: Tensor,
        h0: Tensor,
        weights: GRUWeights,
        config: GRUConfig,
        lengths: Tensor | None = None,
        masks: GRUMasks = NO_MASKS,
    ) -> tuple[Tensor, Tensor]:
        """x: (T, B, I), h0: (B, H), lengths: (B,) int or None -> (y: (T, B, H), h_n: (B, H))."""
        ...

    def supports_mingru(self, x: Tensor) -> str | None: ...

    def mingru_layer(
        self, x: Tensor, h0: Tensor | None, weights: MinGRUWeights, sequential: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x: (T, B, I), h0: (B, H) or None (zeros) -> (y: (T, B, H), h_n: (B, H)).

        sequential=False is the log-space parallel scan; True runs step by step (streaming).
        """
        ...
