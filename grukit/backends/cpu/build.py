"""Build the fused CPU kernels on first use and cache them in the user's cache directory.

The extension is compiled from ``csrc/*.cpp`` with ``torch.utils.cpp_extension.load`` into
``$XDG_CACHE_HOME/grukit/cpu-<hash>`` (``~/.cache`` without XDG_CACHE_HOME), where the hash covers the sources,
the torch version, the compiler flags and the CPU (``-march=native`` code is specific to it). A later process
imports the cached library directly, without running the compiler or ninja.

``-march=native`` is tried first (AVX-512 or AVX2 on x86); if the compiler rejects it, a portable build
without it follows. Concurrent first uses build once: ``build_lock`` serialises builds with a lock the kernel
releases when its holder dies, so a killed build never leaves the next process waiting. A machine without a C++
compiler or ninja gets a RuntimeError that says so; dispatch turns it into one warning and uses the reference
backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).with_name("csrc")
BASE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-Wno-unused-function"]
NATIVE_FLAGS = ["-march=native"]
# The two-thread split runs on torch's OpenMP threads (team.h): the extension links the libgomp torch loaded.
OPENMP_FLAGS = ["-fopenmp"] if "parallel backend: OpenMP" in torch.__config__.parallel_info() else []


def flag_sets() -> list[list[str]]:
    """The builds tried, best first: OpenMP and -march=native, OpenMP alone, neither (a compiler that lacks them)."""
    sets = [BASE_FLAGS + OPENMP_FLAGS + NATIVE_FLAGS, BASE_FLAGS + OPENMP_FLAGS, BASE_FLAGS]
    return [flags for i, flags in enumerate(sets) if flags not in sets[:i]]


_lock = threading.Lock()
_module: ModuleType | None = None


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/grukit`` or ``~/.cache/grukit``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "grukit"


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def build_dir(flags: list[str]) -> tuple[str, Path]:
    """(module name, build directory) for these flags: both named by the hash of everything that matters."""
    digest = hashlib.sha256()
    for src in sorted(CSRC.glob("*.[ch]*")):  # the sources and the headers they include
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    for part in (torch.__version__, " ".join(flags), _cpu_identity(), platform.python_version()):
        digest.update(part.encode())
    key = digest.hexdigest()[:16]
    return f"grukit_cpu_{key}", cache_root() / f"cpu-{key}"


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """Import a previously built library from ``directory``, or None if there is none."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for candidate in (directory / f"{name}.so", directory / f"{name}{suffix}"):
        if candidate.is_file():
            loader = importlib.machinery.ExtensionFileLoader(name, str(candidate))
            spec = importlib.util.spec_from_file_location(name, str(candidate), loader=loader)
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            return module
    return None


BUILD_WAIT_S = 900.0
"""How long a process waits for another process's build of the same kernels before giving up with an error."""


@contextlib.contextmanager
def build_lock(directory: Path, wait_s: float = BUILD_WAIT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<directory>.lock`` for one build of ``directory``.

    The kernel releases a flock when its holder dies, so a killed build never blocks the next one (torch's own
    ``<directory>/lock`` baton would: a later process waits on it forever). Within the lock no other grukit process
    is building here, so a leftover torch baton is removed before building. Waiting is logged to stderr once and
    bounded by ``wait_s``; past it a RuntimeError names the lock file.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory.with_name(directory.name + ".lock")
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + wait_s
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    print(f"grukit: waiting for another process's build of the cpu kernels ({path})", file=sys.stderr)
                    announced = True
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"another process has held {path} for over {wait_s:.0f} s while building grukit's cpu "
                        "kernels; wait for it to finish or end it"
                    ) from None
                time.sleep(0.2)
        try:
            (directory / "lock").unlink(missing_ok=True)  # torch's baton, left by a killed build
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(name: str, directory: Path, flags: list[str], verbose: bool) -> ModuleType:
    """Build under ``build_lock``; a process that waited for another's build imports that build instead."""
    from torch.utils import cpp_extension

    with build_lock(directory):
        module = _import_built(name, directory)
        if module is not None:
            return module
        directory.mkdir(parents=True, exist_ok=True)
        return cpp_extension.load(
            name=name,
            sources=[str(s) for s in _sources()],
            extra_cflags=flags,
            extra_ldflags=[f for f in flags if f in OPENMP_FLAGS],
            build_directory=str(directory),
            verbose=verbose,
        )


def load_extension(verbose: bool = False) -> ModuleType:
    """The compiled kernels, built on first use (about a minute on 2 cores) and cached.

    Raises RuntimeError naming what is missing (a C++ compiler, ninja) or the compiler's complaint.
    """
    global _module
    with _lock:
        if _module is not None:
            return _module
        attempts = flag_sets()
        for flags in attempts:  # a cached build needs no compiler
            module = _import_built(*build_dir(flags))
            if module is not None:
                _module = module
                return module
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            raise RuntimeError(
                f"no C++ compiler found ({compiler!r} is not on PATH; install g++ or set CXX): grukit's cpu backend "
                "compiles its kernels on first use"
            )
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja): grukit's cpu backend needs it to build")
        errors = []
        for flags in attempts:
            try:
                _module = _compile(*build_dir(flags), flags, verbose)
                return _module
            except Exception as err:  # -march=native or -fopenmp unknown to this compiler: try fewer flags
                errors.append(f"flags {' '.join(flags)}: {err}")
        raise RuntimeError("building grukit's cpu kernels failed: " + " | ".join(errors))
