"""Parameter lookup on the per-call path of the layers."""

from __future__ import annotations

from torch import Tensor, nn


def parameter(module: nn.Module, name: str) -> Tensor | None:
    """``getattr(module, name)``, from the module's own parameter dict first: nn.Module.__getattr__ costs about
    0.5 µs a lookup on the per-call path; what lives elsewhere (torch.nn.utils.parametrize, weight_norm's plain
    attributes, a parameter registered as None) still comes through getattr."""
    found = module._parameters.get(name)
    return found if found is not None else getattr(module, name)
