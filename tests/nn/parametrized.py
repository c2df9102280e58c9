"""Twin modules for the tests of weights that live outside a module's own parameters (torch.nn.utils.parametrize)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize


class Double(nn.Module):
    """A parametrization: the weight times 2."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def doubled_twins(make: Callable[[], nn.Module], name: str) -> tuple[nn.Module, nn.Module]:
    """(wrapped, plain): two modules from `make` with the same weights (the first one's), `name` doubled by a
    parametrization in wrapped and in place in plain, so both must compute the same."""
    wrapped, plain = make(), make()
    plain.load_state_dict(wrapped.state_dict())
    parametrize.register_parametrization(wrapped, name, Double())
    with torch.no_grad():
        getattr(plain, name).mul_(2)
    return wrapped, plain
