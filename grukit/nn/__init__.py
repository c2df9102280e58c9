"""Layers users put in their own models."""

from grukit.nn.cell import GRUCell
from grukit.nn.gru import GRU
from grukit.nn.mingru import MinGRU

__all__ = ["GRU", "GRUCell", "MinGRU"]
