"""Gate order conversion: the one place that knows PyTorch's (r, z, n) and Keras/ONNX's (z, r, h).

Inside grukit every stacked gate tensor holds three blocks of ``H`` along one axis in PyTorch order
(reset r, update z, new n). Keras and ONNX stack the same three blocks as (update z, reset r, candidate h),
so converting either way swaps the first two blocks; the third (n = h) stays. The swap is its own inverse,
but both directions are named so that call sites say which way they go.
"""

from __future__ import annotations

import numpy as np

TORCH_ORDER = ("r", "z", "n")
KERAS_ONNX_ORDER = ("z", "r", "h")


def _swap_first_two_blocks(array: np.ndarray, axis: int) -> np.ndarray:
    """array: (..., 3H, ...) with the gate axis ``axis`` -> a new array with blocks 0 and 1 swapped."""
    array = np.asarray(array)
    size = array.shape[axis]
    if size % 3 != 0:
        raise ValueError(
            f"the gate axis {axis} must hold 3 blocks of hidden_size, got size {size} (not divisible by 3)"
        )
    first, second, third = np.split(array, 3, axis=axis)
    return np.concatenate([second, first, third], axis=axis)


def torch_to_zrh(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """PyTorch gate order (r, z, n) -> Keras/ONNX order (z, r, h) along ``axis`` (size 3H). Returns a copy."""
    return _swap_first_two_blocks(array, axis)


def zrh_to_torch(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Keras/ONNX gate order (z, r, h) -> PyTorch order (r, z, n) along ``axis`` (size 3H). Returns a copy."""
    return _swap_first_two_blocks(array, axis)
