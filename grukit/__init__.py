"""grukit: the GRU toolkit for PyTorch."""

from grukit.interop import export_onnx
from grukit.nn import GRU, GRUCell, MinGRU

__version__ = "0.1.0"

__all__ = ["GRU", "GRUCell", "MinGRU", "Model", "__version__", "export_onnx"]


def __getattr__(name: str) -> object:
    """``grukit.Model`` is imported on first use (it pulls in the workflow: safetensors, tasks)."""
    if name == "Model":
        from grukit.workflow.model import Model

        return Model
    raise AttributeError(f"module 'grukit' has no attribute {name!r}")
