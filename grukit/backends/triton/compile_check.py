"""Compile kernel configurations for an NVIDIA target on any machine (no GPU needed) and report their resources.

``python -m grukit.backends.triton.compile_check [INDEX ...]`` compiles the entries of ``configs.all_configs()``
(all, or those indices) for sm_90 with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, runs
ptxas with ``-v`` on the PTX (the same flags Triton uses) and prints one JSON line per configuration: shared
memory in bytes, registers per thread, spill stores and loads in bytes. Must run in a process where
TRITON_INTERPRET is unset (``triton.jit`` builds interpreter functions otherwise), hence a module of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from grukit.backends.triton.configs import KernelConfig

SHARED_LIMIT = 227 * 1024
"""Bytes of shared memory one sm_90 block may use."""
MAX_REGISTERS = 255


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def compile_one(index: int, arch: int = 90) -> dict[str, object]:
    """Compile ``all_configs()[index]`` for ``sm_{arch}``; returns its resources (see the module docstring)."""
    from grukit.backends.triton import configs

    return {"index": index, **compile_config(configs.all_configs()[index], arch)}


def compile_config(config: KernelConfig, arch: int = 90) -> dict[str, object]:
    """Compile one configuration for ``sm_{arch}``; returns its resources (see the module docstring)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from grukit.backends.triton import configs, kernels

    start = time.perf_counter()
    source = ASTSource(getattr(kernels, config.kernel), configs.signature(config), config.consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": config.num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        cmd = [_ptxas(arch), "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", ptx, "-o", ptx + ".o"]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        if found is None:
            raise RuntimeError(f"ptxas -v output lacks {pattern!r}:\n{log}")
        return int(found.group(1))

    return {
        "config": config.describe(),
        "shared": int(compiled.metadata.shared),
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "seconds": round(time.perf_counter() - start, 2),
    }


def problems(report: dict[str, object]) -> list[str]:
    """What is wrong with one report: shared memory over the limit, registers over 255, spills."""
    out = []
    if report["shared"] > SHARED_LIMIT:
        out.append(f"shared memory {report['shared']} B > {SHARED_LIMIT} B")
    if report["registers"] > MAX_REGISTERS:
        out.append(f"{report['registers']} registers")
    if report["spill_stores"] or report["spill_loads"]:
        out.append(f"spills ({report['spill_stores']} B stored, {report['spill_loads']} B loaded)")
    return out


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    from grukit.backends.triton import configs

    indices = [int(a) for a in argv] or list(range(len(configs.all_configs())))
    bad = 0
    for index in indices:
        report = compile_one(index)
        report["problems"] = problems(report)
        bad += bool(report["problems"])
        print(json.dumps(report), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
