"""How the recurrence is computed: the reference backend, the contract and dispatch."""

from grukit.backends.contract import GRUConfig, GRUMasks, GRUWeights, MinGRUWeights
from grukit.backends.dispatch import BackendUnavailable, gru_backend, mingru_backend, register

__all__ = [
    "BackendUnavailable",
    "GRUConfig",
    "GRUMasks",
    "GRUWeights",
    "MinGRUWeights",
    "gru_backend",
    "mingru_backend",
    "register",
]
