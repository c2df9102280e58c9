"""The forward's input side where the loop does not fuse it: one GEMM (MKL) against the cpu backend's micro-kernel.

    python bench/projection.py [--rounds 9]

Interleaved in one process (``ext.set_projection_mode``: 0 the GEMM, 2 the micro-kernel), eval forward of
grukit.GRU(H, H), µs per time step, medians. gru_cpu.cpp's ``project_with_kernel`` picks the micro-kernel at every
size on AMD CPUs and up to W_ih = 256 KiB elsewhere; this script is the measurement behind that choice (run it on
a new CPU before changing it). Prints only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import grukit
from grukit.backends import dispatch
from grukit.backends.cpu import load_extension

CASES = [
    (1024, 1, 256, 1),
    (1024, 8, 128, 1),
    (1024, 64, 32, 1),
    (512, 8, 256, 1),
    (1024, 1, 256, 2),
    (1024, 8, 128, 2),
]
"""(H, B, T, threads)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    rounds = parser.parse_args().rounds
    os.environ[dispatch.ENV_VAR] = "cpu"
    ext = load_extension()
    print("| H | B | T | threads | GEMM µs/step | micro-kernel µs/step | micro-kernel speed-up |")
    print("|---|---|---|---|---|---|---|")
    try:
        for hidden, batch, steps, threads in CASES:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            gru = grukit.GRU(hidden, hidden).eval()
            x = torch.randn(steps, batch, hidden)
            times: dict[int, list[float]] = {0: [], 2: []}
            with torch.no_grad():
                for mode in times:  # warm-up
                    ext.set_projection_mode(mode)
                    gru(x)
                for _ in range(rounds):
                    for mode, samples in times.items():
                        ext.set_projection_mode(mode)
                        start = time.perf_counter()
                        gru(x)
                        samples.append(time.perf_counter() - start)
            gemm, kernel = (statistics.median(times[m]) / steps * 1e6 for m in (0, 2))
            print(f"| {hidden} | {batch} | {steps} | {threads} | {gemm:.1f} | {kernel:.1f} | {gemm / kernel:.2f}x |")
    finally:
        ext.set_projection_mode(1)


if __name__ == "__main__":
    main()
