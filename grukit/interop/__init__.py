"""Weights in and out of grukit: Keras, the ONNX GRU operator's layout, and ONNX model export.

PyTorch gate order (r, z, n) is converted to Keras/ONNX order (z, r, h) only in ``gates``.
``torch.nn.GRU`` conversion lives on the layer itself (``GRU.from_torch`` / ``GRU.to_torch``).
"""

from grukit.interop.keras import from_keras_weights, to_keras_weights
from grukit.interop.onnx_export import export_onnx
from grukit.interop.onnx_weights import from_onnx_weights, to_onnx_weights

__all__ = ["export_onnx", "from_keras_weights", "from_onnx_weights", "to_keras_weights", "to_onnx_weights"]
