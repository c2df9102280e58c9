"""CPU benchmark: grukit's fused cpu backend against torch.nn.GRU and onnxruntime, and against the floor.

    python bench/cpu.py [--threads 1] [--quick] [--out BENCHMARKS.md]

Full-sequence inference (T = 256, input = hidden) for B in {1, 8, 64} and H in {64, 256, 1024}, and training
forward + backward at (T, B, H) in {(64, 8, 64), (64, 1, 256), (64, 32, 256)}, and streaming steps from Python
at B = 1 (``gru.step(x_t, state)`` under no_grad against torch.nn.GRUCell and onnxruntime's session.run with
T = 1 and h0 fed, plus the bare kernel call ``ext.step`` to show what is Python). Competitors run in interleaved
rounds (one call each per round) and each column is the median over rounds. The floor is
../shared/notes/cpu-baselines.md's formula: max(2·B·3H·H / 96e9, 3H²·4 bytes / bandwidth at that size)
+ 2·B·3H·I / 96e9 seconds per step. The table goes into BENCHMARKS.md between this script's markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch, OpenMP and onnxruntime threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="a small subset (B, H in {1, 8} x {64, 256}, T = 64)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--pack-cache", type=int, default=8, help="entries of the cpu backend's opt-in packed-weight cache (0: off)"
    )
    return parser.parse_args()


ARGS = _args()
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)  # before torch is imported
os.environ["MKL_NUM_THREADS"] = str(ARGS.threads)
os.environ["GRUKIT_CPU_PACK_CACHE"] = str(ARGS.pack_cache)  # read when grukit's cpu backend is imported

import torch  # noqa: E402
from report import write_section  # noqa: E402 (bench/report.py, beside this script)

import grukit  # noqa: E402
from grukit.backends import dispatch  # noqa: E402
from grukit.backends.cpu import load_extension  # noqa: E402

FLOP_RATE = 96e9  # MKL sgemm, one core, from the notes
BANDWIDTH = [(24 * 1024, 215e9), (768 * 1024, 110e9), (1536 * 1024, 97e9), (12 * 1024 * 1024, 80e9)]  # L1..L3
DRAM = 23e9
START, END = "<!-- bench/cpu.py: start -->", "<!-- bench/cpu.py: end -->"


def floor_us(batch: int, hidden: int, inputs: int) -> float:
    """The notes' floor for one time step in µs (float32)."""
    weight_bytes = 3 * hidden * hidden * 4
    bandwidth = next((bw for size, bw in BANDWIDTH if weight_bytes <= size), DRAM)
    recurrent = max(2 * batch * 3 * hidden * hidden / FLOP_RATE, weight_bytes / bandwidth)
    return (recurrent + 2 * batch * 3 * hidden * inputs / FLOP_RATE) * 1e6


def interleaved(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def ort_session(gru: grukit.GRU, directory: str):
    """An onnxruntime session of grukit's ONNX export, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = grukit.export_onnx(gru, Path(directory) / f"gru_{gru.hidden_size}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = ARGS.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sgemm_rate() -> float:
    """This machine's measured torch sgemm GFLOP/s at one large square size (the notes assume 96)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    seconds = interleaved({"mm": lambda: torch.mm(a, b)}, 7)["mm"]
    return 2 * 1024**3 / seconds / 1e9


def inference(steps: int, batches: list[int], hiddens: list[int], directory: str) -> list[dict]:
    rows = []
    for hidden in hiddens:
        for batch in batches:
            torch.manual_seed(0)
            reference = torch.nn.GRU(hidden, hidden).eval()
            gru = grukit.GRU.from_torch(reference).eval()
            x = torch.randn(steps, batch, hidden)
            session = ort_session(gru, directory)
            feed = {"input": x.numpy()}
            fns = {"torch": lambda m=reference, x=x: m(x), "grukit": lambda m=gru, x=x: m(x)}
            if session is not None:
                fns["ort"] = lambda s=session, f=feed: s.run(None, f)
            with torch.no_grad():
                expected, got = reference(x)[0], gru(x)[0]
                assert (expected - got).abs().max().item() < 1e-4
                work = 2 * batch * 3 * hidden * hidden * steps
                rounds = max(3, min(11, int(3e9 / work)))  # fewer rounds where one call takes seconds
                medians = interleaved(fns, rounds)
            per_step = {name: seconds / steps * 1e6 for name, seconds in medians.items()}
            row = {"B": batch, "H": hidden, **per_step, "floor": floor_us(batch, hidden, hidden), "rounds": rounds}
            rows.append(row)
            print(_inference_line(row), flush=True)
    return rows


def streaming(hiddens: list[int], directory: str) -> list[dict]:
    """µs per single step at B = 1 from Python (medians of interleaved rounds of 200 calls each)."""
    from grukit.backends.cpu import PACK_CACHE

    rows = []
    for hidden in hiddens:
        torch.manual_seed(0)
        reference = torch.nn.GRU(hidden, hidden).eval()
        gru = grukit.GRU.from_torch(reference).eval()
        cell = torch.nn.GRUCell(hidden, hidden).eval()
        with torch.no_grad():
            for ours, theirs in (("ih", "ih_l0"), ("hh", "hh_l0")):
                getattr(cell, f"weight_{ours}").copy_(getattr(reference, f"weight_{theirs}"))
                getattr(cell, f"bias_{ours}").copy_(getattr(reference, f"bias_{theirs}"))
        x, state, h = torch.randn(1, hidden), torch.zeros(1, 1, hidden), torch.zeros(1, hidden)
        ext = load_extension()
        fns = {"cell": lambda c=cell, x=x, h=h: c(x, h), "grukit": lambda g=gru, x=x, s=state: g.step(x, s)}
        if hasattr(ext, "step"):
            weights = gru._layer_weights(0, 0)
            with torch.no_grad():
                packed = PACK_CACHE.get(ext, (weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh), True)
                w_ih = PACK_CACHE.step_weights(ext, packed, weights.w_ih)
            args = (x.unsqueeze(0), state[0], w_ih, packed.w_hh, packed.fold, packed.b_hn)
            fns["kernel"] = lambda a=args, e=ext: e.step(*a)
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            path = grukit.export_onnx(gru, Path(directory) / f"step_{hidden}.onnx", initial_state=True)
            options = ort.SessionOptions()
            options.intra_op_num_threads = ARGS.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {"input": x.unsqueeze(0).numpy(), "h0": state.numpy()}
            fns["ort"] = lambda s=session, f=feed: s.run(None, f)
        with torch.no_grad():
            expected = cell(x, h)
            torch.testing.assert_close(gru.step(x, state)[0], expected, atol=1e-5, rtol=0)
            repeat = 200

            def batched(fn, n=repeat):
                for _ in range(n):
                    fn()

            medians = interleaved({name: lambda f=fn: batched(f) for name, fn in fns.items()}, 15)
        row = {"H": hidden, **{name: seconds / repeat * 1e6 for name, seconds in medians.items()}}
        rows.append(row)
        print(_streaming_line(row), flush=True)
    return rows


def _streaming_line(row: dict) -> str:
    ort = f"{row['ort']:.2f}" if "ort" in row else "-"
    kernel = f"{row['kernel']:.2f}" if "kernel" in row else "-"
    return (
        f"step B=1 H={row['H']}: GRUCell {row['cell']:.2f} µs, ort {ort}, grukit {row['grukit']:.2f} "
        f"(kernel call {kernel}), {row['cell'] / row['grukit']:.2f}x GRUCell"
    )


def training(configs: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for steps, batch, hidden in configs:
        torch.manual_seed(0)
        reference = torch.nn.GRU(hidden, hidden)
        gru = grukit.GRU.from_torch(reference)
        x = torch.randn(steps, batch, hidden)

        def step(module, x=x):
            module.zero_grad(set_to_none=True)
            y, h_n = module(x)
            (y.square().mean() + h_n.square().mean()).backward()

        medians = interleaved({"torch": lambda m=reference: step(m), "grukit": lambda m=gru: step(m)}, 9)
        row = {"T": steps, "B": batch, "H": hidden, **{k: v * 1e3 for k, v in medians.items()}}
        rows.append(row)
        print(f"train T={steps} B={batch} H={hidden}: torch {row['torch']:.2f} ms, grukit {row['grukit']:.2f} ms, "
              f"{row['torch'] / row['grukit']:.2f}x", flush=True)  # fmt: skip
    return rows


def _inference_line(row: dict) -> str:
    ort = f"{row['ort']:.2f}" if "ort" in row else "-"
    return (
        f"B={row['B']} H={row['H']}: torch {row['torch']:.2f} µs/step, ort {ort}, grukit {row['grukit']:.2f}, "
        f"floor {row['floor']:.2f} ({100 * row['floor'] / row['grukit']:.0f} % of floor)"
    )


def markdown(header: list[str], infer: list[dict], stream: list[dict], train: list[dict]) -> str:
    lines = [START, "## CPU (bench/cpu.py)", "", *header, ""]
    lines += [
        "Full-sequence inference, input = hidden, µs per time step (medians of interleaved rounds):",
        "",
        "| B | H | torch.nn.GRU | onnxruntime | grukit cpu | floor | grukit % of floor | speed-up vs torch | vs ort |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in infer:
        ort, ours = r.get("ort"), r["grukit"]
        ort_us, ort_ratio = ("-", "-") if ort is None else (f"{ort:.2f}", f"{ort / ours:.2f}")
        lines.append(
            f"| {r['B']} | {r['H']} | {r['torch']:.2f} | {ort_us} | {ours:.2f} | {r['floor']:.2f} | "
            f"{100 * r['floor'] / ours:.0f} % | {r['torch'] / ours:.2f} | {ort_ratio} |"
        )
    lines += [
        "",
        "Streaming from Python, B = 1, one step per call, µs per call (`gru.step` under no_grad; kernel = the bare "
        "`ext.step` call, i.e. what is left without grukit's layer code):",
        "",
        "| H | torch.nn.GRUCell | onnxruntime (T = 1) | grukit step | grukit kernel call | vs GRUCell | vs ort |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in stream:
        ort, ours = r.get("ort"), r["grukit"]
        ort_us, ort_ratio = ("-", "-") if ort is None else (f"{ort:.2f}", f"{ort / ours:.2f}")
        kernel = f"{r['kernel']:.2f}" if "kernel" in r else "-"
        lines.append(
            f"| {r['H']} | {r['cell']:.2f} | {ort_us} | {ours:.2f} | {kernel} | {r['cell'] / ours:.2f} | {ort_ratio} |"
        )
    lines += ["", "Training, forward + backward, ms per iteration:", ""]
    lines.append("| T, B, H | torch.nn.GRU | grukit cpu | speed-up vs torch |")
    lines.append("|---|---|---|---|")
    for r in train:
        speedup = r["torch"] / r["grukit"]
        lines.append(f"| {r['T']}, {r['B']}, {r['H']} | {r['torch']:.2f} | {r['grukit']:.2f} | {speedup:.2f} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} logical CPUs"


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    os.environ[dispatch.ENV_VAR] = "cpu"  # grukit's column is the cpu backend or an error, never a silent fallback
    ext = load_extension()
    rate = sgemm_rate()
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = "not installed"
    command = "python bench/cpu.py " + " ".join(sys.argv[1:])
    header = [
        f"- Machine: {machine()}; kernels built for {ext.vector_bytes() * 8}-bit vectors; measured torch sgemm "
        f"{rate:.0f} GFLOP/s on one thread (the floor assumes the notes' 96).",
        f"- Threads: {ARGS.threads} (torch.set_num_threads, OMP_NUM_THREADS, onnxruntime intra_op_num_threads).",
        f"- torch {torch.__version__}, onnxruntime {ort_version}, Python {platform.python_version()}.",
        f"- grukit cpu packed-weight cache: {ARGS.pack_cache} entries (opt-in, GRUKIT_CPU_PACK_CACHE; off by default;"
        " `--pack-cache 0` measures the default).",
        f"- Date: {datetime.date.today().isoformat()}. Command: `{command.strip()}`.",
    ]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        if ARGS.quick:
            infer = inference(64, [1, 8], [64, 256], directory)
            stream = streaming([64, 256], directory)
            train = training([(64, 8, 64)])
        else:
            infer = inference(256, [1, 8, 64], [64, 256, 1024], directory)
            stream = streaming([64, 256, 1024], directory)
            train = training([(64, 8, 64), (64, 1, 256), (64, 32, 256)])
    section = markdown(header, infer, stream, train)
    print(section)
    if not ARGS.no_write:
        write_section(Path(ARGS.out), section, START, END)
        print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    main()
