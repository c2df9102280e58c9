"""The Triton backend (GPU kernels; CPU tensors under ``TRITON_INTERPRET=1``, which is how CI tests it).

Importing this package imports neither triton nor the kernels: ``load_backend`` imports triton only when a CUDA
device or the interpreter is in play, so CPU users without triton never see a warning.
"""

from __future__ import annotations

from grukit.backends.triton.backend import TritonBackend, interpreting

__all__ = ["TritonBackend", "interpreting", "load_backend"]


def load_backend() -> TritonBackend:
    """The backend; raises a clear error when a CUDA device or TRITON_INTERPRET=1 is present but triton is not."""
    backend = TritonBackend()
    if backend.wanted():
        backend.kernels()  # raises RuntimeError naming the missing package
    return backend
