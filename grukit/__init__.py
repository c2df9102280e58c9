"""grukit: the GRU toolkit for PyTorch."""

from grukit.interop import export_onnx
from grukit.nn import GRU, GRUCell, MinGRU

__version__ = "0.1.0"

__all__ = ["GRU", "GRUCell", "MinGRU", "__version__", "export_onnx"]
