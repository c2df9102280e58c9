"""Fused C++ CPU kernels (forward and backward through time), built on first use and cached.

``load_backend()`` is the loader dispatch registers: it builds (or loads the cached) extension and returns a
``CpuBackend``. Importing this package compiles nothing.
"""

from __future__ import annotations

from grukit.backends.cpu.backend import PACK_CACHE, CpuBackend, clear_pack_cache
from grukit.backends.cpu.build import cache_root, load_extension


def load_backend() -> CpuBackend:
    """The cpu backend, compiling its kernels on first use (raises RuntimeError when that is impossible)."""
    return CpuBackend(load_extension())


__all__ = ["PACK_CACHE", "CpuBackend", "cache_root", "clear_pack_cache", "load_backend", "load_extension"]
