"""Backend selection: the fastest backend that supports a call, or the one ``GRUKIT_BACKEND`` forces.

Backends register a loader with a priority. A loader that raises (a kernel that failed to build) warns
once and its backend is skipped from then on. A forced backend that cannot serve a call raises
``BackendUnavailable`` naming what it lacks; it never falls back in silence.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from grukit.backends.contract import Backend, GRUConfig
from grukit.backends.reference import ReferenceBackend

ENV_VAR = "GRUKIT_BACKEND"


class BackendUnavailable(RuntimeError):
    """A forced backend cannot serve a call, or cannot be loaded at all."""


_loaders: dict[str, tuple[int, Callable[[], Backend]]] = {}
_loaded: dict[str, Backend | None] = {}
_order: list[str] = []  # names(), kept sorted by register(): every layer call walks it
GENERATION = [0]  # bumped by every register(): a cached choice of backend is valid while it holds its value


def register(name: str, loader: Callable[[], Backend], priority: int) -> None:
    """Make a backend available; higher priority is tried first (the reference has priority 0)."""
    _loaders.pop(name, None)  # re-registering counts as registering last
    _loaders[name] = (priority, loader)
    _loaded.pop(name, None)
    order = list(_loaders)
    _order[:] = sorted(_loaders, key=lambda n: (-_loaders[n][0], -order.index(n)))
    GENERATION[0] += 1


def names() -> list[str]:
    """Registered backend names, highest priority first; among equals, the one registered last (a user's own)."""
    return list(_order)


def load(name: str) -> Backend | None:
    """The backend called ``name``, loading it on first use; None (after one warning) if it fails to load."""
    if name not in _loaders:
        raise ValueError(f"unknown grukit backend {name!r}; choose one of {names()}")
    if name not in _loaded:
        if name != "reference" and torch.compiler.is_compiling():
            return None  # a loader may compile C++: never inside a trace (an eager call loads it)
        try:
            _loaded[name] = _loaders[name][1]()
        except Exception as err:  # a failed build must not stop the user: warn once, use the others
            warnings.warn(f"grukit backend {name!r} is unavailable ({err}); using the others", stacklevel=3)
            _loaded[name] = None
    return _loaded[name]


def forced() -> str | None:
    """The backend name forced through the GRUKIT_BACKEND environment variable, if any."""
    return os.environ.get(ENV_VAR) or None


@contextlib.contextmanager
def force(name: str | None) -> Iterator[None]:
    """Within the block every call runs as under ``GRUKIT_BACKEND=name`` (None: no backend forced); the
    variable's previous value is restored afterwards."""
    previous = os.environ.get(ENV_VAR)
    if name is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def _select(reason_of: Callable[[Backend], str | None], what: str) -> Backend:
    name = forced()
    if name is not None:
        backend = load(name)
        if backend is None:
            if name not in _loaded:
                raise BackendUnavailable(f"{ENV_VAR}={name}: backends are not loaded inside a torch.compile trace")
            raise BackendUnavailable(f"{ENV_VAR}={name}: the backend failed to load (see the warning above)")
        reason = reason_of(backend)
        if reason is not None:
            raise BackendUnavailable(f"{ENV_VAR}={name} cannot run this {what}: {reason}; unset {ENV_VAR} to fall back")
        return backend
    for candidate in _order:
        backend = load(candidate)
        if backend is not None and reason_of(backend) is None:
            return backend
    raise BackendUnavailable(f"no grukit backend can run this {what}")  # unreachable while reference is registered


def gru_backend(x: Tensor, config: GRUConfig, lengths: Tensor | None) -> Backend:
    """The backend for one GRU layer call. x: (T, B, I)."""
    return _select(lambda b: b.supports_gru(x, config, lengths), "GRU call")


def mingru_backend(x: Tensor) -> Backend:
    """The backend for one MinGRU layer call. x: (T, B, I)."""
    return _select(lambda b: b.supports_mingru(x), "MinGRU call")


def _load_triton() -> Backend:
    # cheap and silent on a CPU-only machine: triton is imported only with a CUDA device or TRITON_INTERPRET=1,
    # and then a missing triton raises a clear error (warned once by ``load``)
    from grukit.backends.triton import load_backend

    return load_backend()


def _load_cpu() -> Backend:
    from grukit.backends.cpu import load_backend  # imported and built on the first GRU call, not on import grukit

    return load_backend()


register("reference", ReferenceBackend, priority=0)
register("cpu", _load_cpu, priority=10)
register("triton", _load_triton, priority=20)
