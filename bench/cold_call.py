"""Warm against cold calls: what one GRU call costs when the caches hold it, and after other work evicted them.

    python bench/cold_call.py [--hidden 64] [--batch 1] [--steps 1,256] [--rounds 30] [--no-write]

bench/cpu.py interleaves its competitors, so each of its calls starts with caches that the others filled: small
shapes there measure a call's cold cost as much as its time loop. This script separates the two, on one thread:
"warm" is the median of a call repeated back to back, "cold" the median of the same call right after 20 float32
512 x 512 matmuls (6 MiB of operands: past the L2 of either machine we measured). Rows: grukit.GRU (Python layer,
dispatch and C++), the cpu backend's C++ forward alone (weights packed per call, as grukit.GRU does by default),
the input-projection GEMM as torch.addmm (MKL) and onnxruntime's session.run of the exported model. The table goes
into BENCHMARKS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported
os.environ["GRUKIT_BACKEND"] = "cpu"

import torch
from report import machine, ort_session, publish  # bench/report.py, beside this script

import grukit
from grukit.backends.cpu import load_extension

START, END = "<!-- bench/cold_call.py: start -->", "<!-- bench/cold_call.py: end -->"


def median_us(fn: Callable[[], object], before: Callable[[], object], rounds: int) -> float:
    """Median µs of fn() over rounds, each round after before() (untimed)."""
    fn()
    times = []
    for _ in range(rounds):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def competitors(hidden: int, batch: int, steps: int, directory: str) -> dict[str, Callable[[], object]]:
    """The calls to time, all on the same weights and input x: (steps, batch, hidden)."""
    torch.manual_seed(0)
    gru = grukit.GRU(hidden, hidden).eval()
    ext = load_extension()
    x, h0 = torch.randn(steps, batch, hidden), torch.zeros(batch, hidden)
    w_ih, w_hh, b_ih, b_hh = (p.detach() for p in (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0))
    fns: dict[str, Callable[[], object]] = {
        "grukit.GRU": lambda: gru(x),
        "C++ forward": lambda: ext.forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, True, False, False),
        "torch.addmm (input GEMM)": lambda: torch.addmm(b_ih, x.reshape(-1, hidden), w_ih.t()),
    }
    path = grukit.export_onnx(gru, Path(directory) / "gru.onnx")
    session = ort_session(path, 1)
    if session is not None:
        fns["onnxruntime"] = lambda: session.run(None, {"input": x.numpy()})
    return fns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", default="1,256", help="sequence lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    a = torch.randn(512, 512)

    def evict() -> None:
        for _ in range(20):
            torch.mm(a, a)

    lines = [
        START,
        "## Warm and cold calls (bench/cold_call.py)",
        "",
        f"- {machine()}; torch {torch.__version__}; {datetime.date.today().isoformat()}; command: "
        f"`{' '.join(['python bench/cold_call.py', *sys.argv[1:]])}`.",
        f"- B = {args.batch}, H = I = {args.hidden}, 1 thread, µs per call, medians of {args.rounds}; cold: right "
        "after 20 float32 512 x 512 matmuls.",
        "",
        "| T | call | warm | cold | cold - warm |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        for steps in (int(s) for s in args.steps.split(",")):
            for name, fn in competitors(args.hidden, args.batch, steps, directory).items():
                warm = median_us(fn, lambda: None, args.rounds)
                cold = median_us(fn, evict, args.rounds)
                lines.append(f"| {steps} | {name} | {warm:.1f} | {cold:.1f} | {cold - warm:.1f} |")
                print(lines[-1], flush=True)
    lines.append(END)
    section = "\n".join(lines) + "\n"
    publish(section, None if args.no_write else Path(args.out), START, END)


if __name__ == "__main__":
    main()
