"""CPU benchmark: grukit's fused cpu backend against torch.nn.GRU and onnxruntime, and against the floor.

    python bench/cpu.py [--threads 1,2] [--quick] [--out BENCHMARKS.md] [--quiet 88,1.8]

Full-sequence inference (T = 256, input = hidden) for B in {1, 8, 64} and H in {64, 256, 1024}; streaming steps
from Python at B = 1: ``stepper.step(x_t, state)`` (``gru.stepper()``: weights packed once, all layers in one C++
call), the plain ``gru.step`` under no_grad, and the bare C++ call, against torch.nn.GRUCell and onnxruntime's
session.run with T = 1 and h0 fed; training forward + backward at (T, B, H) in {(64, 8, 64), (64, 1, 256),
(64, 32, 256)} with each side's peak memory. Every competitor runs at each thread count in the same interleaved
rounds (one call each per round, in a shuffled order, thread count set before each call) and each column is the
median over rounds, so the 2-thread / 1-thread ratios come from one run. The floor is
../shared/notes/cpu-baselines.md's formula: max(2·B·3H·H / 96e9, 3H²·4 bytes / bandwidth at that size) +
2·B·3H·I / 96e9 seconds per step (one thread), with the ceilings the notes measured on an AMD EPYC; "floor here"
is the same formula with this machine's measured sgemm rate and one-thread read bandwidth at the size of W_hh
(the notes' ceilings do not hold on other CPUs). The tables go into BENCHMARKS.md between this script's markers,
one section per build's vector width (section_names).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _quiet_bars(text: str) -> tuple[float, float]:
    """--quiet's GFLOPS,SCALING."""
    try:
        gflops, scaling = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes two numbers, GFLOPS,SCALING (e.g. 88,1.8); got {text!r}") from None
    return gflops, scaling


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to compare, comma-separated (default 1,2)")
    parser.add_argument("--quick", action="store_true", help="a small subset (B, H in {1, 8} x {64, 256}, T = 64)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--pack-cache", type=int, default=0, help="entries of the cpu backend's opt-in packed-weight cache (0: off)"
    )
    parser.add_argument(
        "--quiet",
        type=_quiet_bars,
        metavar="GFLOPS,SCALING",
        help="first wait until two sgemm checks in a row show at least GFLOPS on one thread and SCALING on the most "
        "threads against one (the other core free), for up to --quiet-wait seconds; off by default",
    )
    parser.add_argument("--quiet-wait", type=float, default=3600.0, help="seconds --quiet waits at most (3600)")
    args = parser.parse_args()
    args.threads = [int(n) for n in args.threads.split(",")]
    return args


ARGS = _args()
SPLIT_POOLS = {0: "its own worker thread (OMP_WAIT_POLICY=PASSIVE)", 1: "torch's OpenMP threads"}
os.environ["OMP_NUM_THREADS"] = str(max(ARGS.threads))  # before torch is imported: the pool's size
os.environ["MKL_NUM_THREADS"] = str(max(ARGS.threads))
os.environ["GRUKIT_CPU_PACK_CACHE"] = str(ARGS.pack_cache)  # read when grukit's cpu backend is imported

import torch  # noqa: E402
from report import machine, ort_session, publish  # noqa: E402 (bench/report.py, beside this script)

import grukit  # noqa: E402
from grukit.backends import dispatch  # noqa: E402
from grukit.backends.cpu import load_extension  # noqa: E402

FLOP_RATE = 96e9  # MKL sgemm, one core, from the notes
BANDWIDTH = [(24 * 1024, 215e9), (768 * 1024, 110e9), (1536 * 1024, 97e9), (12 * 1024 * 1024, 80e9)]  # L1..L3
DRAM = 23e9


def section_names(vector_bits: int) -> tuple[str, str, str]:
    """(start marker, end marker, title) of this build's section: AVX-512 builds (512-bit vectors, the notes'
    machine) write "CPU", others their own section beside it (AVX2 machines: 3-row tiles, half the FMA width), so
    a run on one kind of machine never replaces the other's table."""
    if vector_bits == 512:
        return "<!-- bench/cpu.py: start -->", "<!-- bench/cpu.py: end -->", "## CPU (bench/cpu.py)"
    name = f"bench/cpu.py {vector_bits}-bit"
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->", f"## CPU, {vector_bits}-bit vector build (bench/cpu.py)"


INFERENCE_ROUNDS = (3, 41)  # the fewest and most rounds of an inference table's calls, fewer where a call does more


def floor_us(batch: int, hidden: int, inputs: int, flop_rate: float = FLOP_RATE, bandwidth: float = 0.0) -> float:
    """The floor for one time step in µs (float32): the notes' (AMD EPYC) ceilings by default, or a measured FLOP
    rate and read bandwidth at the size of W_hh."""
    weight_bytes = 3 * hidden * hidden * 4
    bandwidth = bandwidth or next((bw for size, bw in BANDWIDTH if weight_bytes <= size), DRAM)
    recurrent = max(2 * batch * 3 * hidden * hidden / flop_rate, weight_bytes / bandwidth)
    return (recurrent + 2 * batch * 3 * hidden * inputs / flop_rate) * 1e6


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds. Each round runs them in its own order
    (seeded shuffle): a call runs slower after some others (caches and the other core left to another library's
    threads; grukit's 2-thread training right after torch's measured 1.35x over its 1 thread, 1.59x after its own
    1-thread call), and a fixed order would pin that on the same column every round. Each timed call follows an
    untimed call of the same function: on this shared machine a call after a few ms of other work finds its code and
    data gone from L2 and L3 (cold_calls), a cost set by what runs outside the process, which the floor (W_hh read
    from cache) leaves out."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            fns[name]()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def at_threads(fns: dict[str, Callable[[], object]], threads: int) -> dict[str, Callable[[], object]]:
    """Each fn renamed ``name@threads`` and run after ``torch.set_num_threads(threads)`` (outside the timer's
    interest: it costs microseconds against the milliseconds timed; the streaming calls come in batches of 200)."""

    def wrap(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(threads)
            return fn()

        return run

    return {f"{name}@{threads}": wrap(fn) for name, fn in fns.items()}


def cold_calls(steps: int = 256, hidden: int = 64) -> dict[str, tuple[float, float]]:
    """µs per step of grukit and torch.nn.GRU at B = 1 (1 thread), each (cold, warm): the median of 21 calls timed
    after 5 ms of Python spinning (which touches almost no memory) and of 21 timed right after a call of their own."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reference = torch.nn.GRU(hidden, hidden).eval()
    fns = {"torch": reference, "grukit": grukit.GRU.from_torch(reference).eval()}
    x = torch.randn(steps, 1, hidden)

    def spin() -> None:
        end = time.perf_counter() + 5e-3
        while time.perf_counter() < end:
            pass

    result = {}
    with torch.no_grad():
        for name, module in fns.items():
            timed = {}
            for mode, before in (("cold", spin), ("warm", lambda m=module: m(x))):
                seconds = []
                for _ in range(21):
                    before()
                    start = time.perf_counter()
                    module(x)
                    seconds.append(time.perf_counter() - start)
                timed[mode] = statistics.median(seconds) / steps * 1e6
            result[name] = (timed["cold"], timed["warm"])
    return result


def sgemm_rate() -> float:
    """This machine's measured torch sgemm GFLOP/s on one thread, the better of two square sizes (the notes: 96)."""
    torch.set_num_threads(1)
    rates = []
    for n in (512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates.append(2 * n**3 / interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, 7)["mm"] / 1e9)
    return max(rates)


def sgemm_scaling(threads: int) -> float:
    """torch sgemm at ``threads`` threads against one, 1024 x 1024, interleaved medians: what this machine gives a
    compute-bound job on more cores right now (below ~1.9 the other core is busy or an SMT sibling)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm = {"mm": lambda: torch.mm(a, b)}
    fns = at_threads(mm, 1) | at_threads(mm, threads)
    seconds = interleaved(fns, 9)
    return seconds["mm@1"] / seconds[f"mm@{threads}"]


def wait_until_quiet(gflops: float, scaling: float, threads: int, timeout_s: float) -> str:
    """Returns once two sgemm checks in a row meet both bars (sgemm_rate() >= gflops, sgemm_scaling(threads) >=
    scaling), checking every 20 s; the header's note of it. Exits with an error after timeout_s, before anything
    is measured or written."""
    start, passed = time.monotonic(), 0
    while passed < 2:
        rate, scale = sgemm_rate(), sgemm_scaling(threads) if threads > 1 else float("inf")  # one thread: no bar
        passed = passed + 1 if rate >= gflops and scale >= scaling else 0
        print(f"quiet check: sgemm {rate:.0f} GFLOP/s, {threads}t/1t {scale:.2f}x", file=sys.stderr, flush=True)
        if passed == 0:
            if time.monotonic() - start > timeout_s:
                raise SystemExit(
                    f"bench/cpu.py --quiet: the machine was not quiet for {timeout_s:.0f} s (wanted sgemm >= "
                    f"{gflops:g} GFLOP/s and {threads}t/1t >= {scaling:g}x twice in a row); nothing was written. "
                    "Rerun later, or lower the bars."
                )
            time.sleep(20)
    waited = time.monotonic() - start
    return f"started after two sgemm checks in a row met {gflops:g} GFLOP/s and {scaling:g}x ({waited:.0f} s)"


def read_bandwidth(nbytes: int) -> float:
    """This machine's one-thread read bandwidth in bytes/s over a float32 buffer of ``nbytes`` (the size of W_hh):
    torch.sum's median time less that of a 16-element sum (its call overhead), each repeated to take ~10 ms; 0.0
    (the notes' bandwidth for that size, in floor_us) where the read takes under a quarter of the call overhead, too
    short to time this way (about 50 KB: H = 64)."""
    torch.set_num_threads(1)
    big, tiny = torch.randn(nbytes // 4), torch.randn(16)
    repeat = max(1, int(4e7 // nbytes))

    def sums(t: torch.Tensor) -> Callable[[], None]:
        return lambda: [t.sum() for _ in range(repeat)]

    seconds = interleaved({"big": sums(big), "tiny": sums(tiny)}, 9)
    read = seconds["big"] - seconds["tiny"]
    return 0.0 if read < seconds["tiny"] / 4 else nbytes / (read / repeat)


def inference(steps: int, batches: list[int], hiddens: list[int], directory: str, rate: float) -> list[dict]:
    """µs per step of each competitor, with the notes' floor and this machine's (``rate``: measured sgemm GFLOP/s)."""
    rows = []
    for hidden in hiddens:
        bandwidth = read_bandwidth(3 * hidden * hidden * 4)
        for batch in batches:
            torch.manual_seed(0)
            reference = torch.nn.GRU(hidden, hidden).eval()
            gru = grukit.GRU.from_torch(reference).eval()
            x = torch.randn(steps, batch, hidden)
            path = grukit.export_onnx(gru, Path(directory) / f"gru_{hidden}.onnx")
            feed = {"input": x.numpy()}
            fns = {}
            for threads in ARGS.threads:
                ours = {"torch": lambda m=reference, x=x: m(x), "grukit": lambda m=gru, x=x: m(x)}
                session = ort_session(path, threads)
                if session is not None:
                    ours["ort"] = lambda s=session, f=feed: s.run(None, f)
                fns.update(at_threads(ours, threads))
            with torch.no_grad():
                expected, got = reference(x)[0], gru(x)[0]
                assert (expected - got).abs().max().item() < 1e-4
                work = 2 * batch * 3 * hidden * hidden * steps
                fewest, most = INFERENCE_ROUNDS
                rounds = max(fewest, min(most, int(1e10 / work)))  # fewer rounds where one call takes seconds
                medians = interleaved(fns, rounds)
            per_step = {name: seconds / steps * 1e6 for name, seconds in medians.items()}
            row = {"B": batch, "H": hidden, "T": steps, **per_step, "floor": floor_us(batch, hidden, hidden)}
            row["floor_here"] = floor_us(batch, hidden, hidden, rate * 1e9, bandwidth)
            row["bandwidth"] = bandwidth
            rows.append(row)
            print(_inference_line(row), flush=True)
    return rows


def streaming(hiddens: list[int], directory: str) -> list[dict]:
    """µs per single step at B = 1 from Python (medians of interleaved rounds of 200 calls each)."""
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
        stepper, rounded = gru.stepper(), gru.stepper(bf16=True)
        before = grukit.GRU(hidden, hidden, reset_after=False).eval().stepper()  # the other equation form
        normed = grukit.GRU(hidden, hidden, layer_norm=True, zoneout=0.1).eval().stepper()  # the norm layers
        our_cell = grukit.GRUCell(hidden, hidden).eval()
        our_cell.load_state_dict(cell.state_dict())
        fused = stepper._fused  # the bare C++ call: what is left without the stepper's Python
        outs = (torch.empty(1, hidden), torch.empty(1, 1, hidden))  # its outputs given: no allocation per call
        path = grukit.export_onnx(gru, Path(directory) / f"step_{hidden}.onnx", initial_state=True)
        feed = {"input": x.unsqueeze(0).numpy(), "h0": state.numpy()}
        repeat = 200

        def batched(fn: Callable[[], object], n: int = repeat) -> None:
            for _ in range(n):
                fn()

        fns = {}
        for threads in ARGS.threads:
            ours = {
                "cell": lambda c=cell, x=x, h=h: c(x, h),
                "our_cell": lambda c=our_cell, x=x, h=h: c(x, h),
                "stepper": lambda s=stepper, x=x, h=state: s.step(x, h),
                "bf16": lambda s=rounded, x=x, h=state: s.step(x, h),
                "before": lambda s=before, x=x, h=state: s.step(x, h),
                "normed": lambda s=normed, x=x, h=state: s.step(x, h),
                "step": lambda g=gru, x=x, s=state: g.step(x, s),
                "call": lambda f=fused, x=x, s=state: f(x, s),
                "call_out": lambda f=fused, x=x, s=state, o=outs: f(x, s, *o),
            }
            session = ort_session(path, threads)
            if session is not None:
                ours["ort"] = lambda s=session, f=feed: s.run(None, f)
            fns.update(at_threads({name: lambda f=fn: batched(f) for name, fn in ours.items()}, threads))
        with torch.no_grad():
            expected = cell(x, h)
            torch.testing.assert_close(stepper.step(x, state)[0], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(our_cell(x, h), expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(gru.step(x, state)[0], expected, atol=1e-5, rtol=0)
            medians = interleaved(fns, 15)
            xs = torch.randn(100, 1, hidden)
            bf16_error = max((stepper(x_t) - rounded(x_t)).abs().max().item() for x_t in xs)  # 100 steps, carried
        row = {"H": hidden, **{name: seconds / repeat * 1e6 for name, seconds in medians.items()}}
        row["bf16_error"] = bf16_error
        rows.append(row)
        print(_streaming_line(row), flush=True)
    return rows


_libc = ctypes.CDLL(None)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_rss_growth(fn: Callable[[], object]) -> float | None:
    """Bytes by which this process's peak resident set grows during fn(): the peak is reset first
    (/proc/self/clear_refs "5"), after malloc_trim returns freed heap to the system; None off Linux."""
    try:
        _libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status("VmRSS:")
        fn()
        return _proc_status("VmHWM:") - base
    except (OSError, AttributeError, StopIteration):
        return None


VARIANTS = {"masked": {"recurrent_dropout": 0.25, "zoneout": 0.1}, "layer_norm": {"layer_norm": True}}
"""Training variants timed on both grukit backends (torch.nn.GRU has none of them)."""
BACKENDS = ("reference", "cpu")


def on_backend(name: str, fn: Callable[[], object]) -> object:
    """fn() with GRUKIT_BACKEND=name, restored after."""
    before = os.environ[dispatch.ENV_VAR]
    os.environ[dispatch.ENV_VAR] = name
    try:
        return fn()
    finally:
        os.environ[dispatch.ENV_VAR] = before


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

        torch_cell = torch.nn.GRUCell(hidden, hidden)
        our_cell = grukit.GRUCell(hidden, hidden)
        our_cell.load_state_dict(torch_cell.state_dict())

        def unrolled(cell, x=x):  # the decoder-style loop: one cell call per step, autograd through all of them
            cell.zero_grad(set_to_none=True)
            h, total = None, 0.0
            for x_t in x:
                h = cell(x_t, h)
                total = total + h.square().mean()
            total.backward()

        fns = {}
        for threads in ARGS.threads:
            fns.update(at_threads({"torch": lambda m=reference: step(m), "grukit": lambda m=gru: step(m)}, threads))
        cells = {"cell_torch": lambda c=torch_cell: unrolled(c), "cell_grukit": lambda c=our_cell: unrolled(c)}
        fns.update(at_threads(cells, min(ARGS.threads)))
        # the variants torch.nn.GRU lacks, on grukit's two backends (one thread)
        for variant, kwargs in VARIANTS.items():
            module = grukit.GRU(hidden, hidden, **kwargs)
            fns.update(
                at_threads(
                    {f"{variant}_{b}": lambda b=b, m=module: on_backend(b, lambda: step(m)) for b in BACKENDS},
                    min(ARGS.threads),
                )
            )
        medians = interleaved(fns, 9)
        row = {"T": steps, "B": batch, "H": hidden, **{k: v * 1e3 for k, v in medians.items()}}
        torch.set_num_threads(1)
        for name, module in (("torch", reference), ("grukit", gru)):  # medians of 3, one thread
            growth = [peak_rss_growth(lambda m=module: step(m)) for _ in range(3)]
            row[f"mem_{name}"] = None if None in growth else statistics.median(growth) / 2**20
        rows.append(row)
        print(_training_line(row), flush=True)
    return rows


def _gbps(bandwidth: float) -> str:
    return f"{bandwidth / 1e9:.0f}" if bandwidth else "-"  # 0.0: too short to time (see read_bandwidth)


def _ratio(row: dict, slower: str, faster: str) -> str:
    return f"{row[slower] / row[faster]:.2f}" if slower in row and faster in row else "-"


def _us(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def _inference_line(row: dict) -> str:
    one = min(ARGS.threads)
    parts = [f"{name}@{n} {_us(row, f'{name}@{n}')}" for n in ARGS.threads for name in ("torch", "ort", "grukit")]
    return (
        f"B={row['B']} H={row['H']} µs/step: " + ", ".join(parts) + f"; floor {row['floor']:.2f} "
        f"({100 * row['floor'] / row[f'grukit@{one}']:.0f} % of floor at {one} thread)"
    )


def _streaming_line(row: dict) -> str:
    parts = [
        f"{name}@{n} {_us(row, f'{name}@{n}')}"
        for n in ARGS.threads
        for name in ("cell", "ort", "step", "stepper", "call", "call_out", "bf16", "before")
    ]
    speedup = _ratio(row, f"cell@{min(ARGS.threads)}", f"stepper@{min(ARGS.threads)}")
    return f"step B=1 H={row['H']} µs: " + ", ".join(parts) + f"; stepper {speedup}x GRUCell"


def _training_line(row: dict) -> str:
    parts = [f"{name}@{n} {row[f'{name}@{n}']:.2f} ms" for n in ARGS.threads for name in ("torch", "grukit")]
    parts += [f"{key} {row[key]:.2f} ms" for key in row if key.startswith((*VARIANTS, "cell_"))]
    return f"train T={row['T']} B={row['B']} H={row['H']}: " + ", ".join(parts)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(
    names: tuple[str, str, str], header: list[str], infer: list[dict], stream: list[dict], train: list[dict]
) -> str:
    """The section: ``names`` is section_names()' (start marker, end marker, title)."""
    one, more = min(ARGS.threads), [n for n in ARGS.threads if n != min(ARGS.threads)]
    start, end, title = names
    lines = [start, title, "", *header, ""]
    lines += [
        f"Full-sequence inference, T = {infer[0]['T']}, input = hidden, {one} thread, µs per time step (medians of "
        f"{INFERENCE_ROUNDS[0]} to {INFERENCE_ROUNDS[1]} interleaved rounds, fewer where a call does more work):",
        "",
        "| B | H | torch.nn.GRU | onnxruntime | grukit cpu | floor | grukit % of floor | floor here | % of floor here "
        "| read GB/s here | speed-up vs torch | vs ort |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in infer:
        ours = r[f"grukit@{one}"]
        lines.append(
            f"| {r['B']} | {r['H']} | {_us(r, f'torch@{one}')} | {_us(r, f'ort@{one}')} | {ours:.2f} | "
            f"{r['floor']:.2f} | {100 * r['floor'] / ours:.0f} % | {r['floor_here']:.2f} | "
            f"{100 * r['floor_here'] / ours:.0f} % | {_gbps(r['bandwidth'])} | "
            f"{_ratio(r, f'torch@{one}', f'grukit@{one}')} | "
            f"{_ratio(r, f'ort@{one}', f'grukit@{one}')} |"
        )
    lines += [
        "",
        f"Streaming from Python, B = 1, one step per call, {one} thread, µs per call: `stepper.step(x, h)` is "
        "`gru.stepper()`'s handle (weights packed once, all layers in one C++ call); C++ call is that handle's bare "
        "kernel call (what is left without its Python), out= the same call writing into given tensors (no allocation); "
        "`gru.step` is the plain layer call under no_grad (no snapshot: the step kernel from the unpacked weights, "
        "or the opt-in cache's packed ones); bf16 is "
        "`gru.stepper(bf16=True)` (weights rounded to bfloat16, arithmetic in float32), its error the largest "
        "|y_bf16 - y_f32| over 100 steps of N(0, 1) inputs with the state carried; reset_after=False is the stepper "
        "of a GRU in the other equation form (r applied before W_hn: two phases per layer); layer_norm + zoneout is "
        "the stepper of a GRU(layer_norm=True, zoneout=0.1) (each gate's row normalised; zoneout's "
        "expectation); grukit.GRUCell is the drop-in cell with torch.nn.GRUCell's weights, eval under no_grad (the cpu "
        "backend's fused stepper, bound on first use).",
        "",
        "| H | torch.nn.GRUCell | grukit.GRUCell | onnxruntime (T = 1) | grukit `stepper.step` | C++ call "
        "| C++ call, out= | `gru.step` "
        "| stepper vs GRUCell | vs ort | bf16 stepper | bf16 vs float32 stepper | bf16 max error "
        "| reset_after=False stepper | layer_norm + zoneout stepper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in stream:
        lines.append(
            f"| {r['H']} | {_us(r, f'cell@{one}')} | {_us(r, f'our_cell@{one}')} | {_us(r, f'ort@{one}')} | "
            f"{_us(r, f'stepper@{one}')} | "
            f"{_us(r, f'call@{one}')} | {_us(r, f'call_out@{one}')} | {_us(r, f'step@{one}')} | "
            f"{_ratio(r, f'cell@{one}', f'stepper@{one}')} | "
            f"{_ratio(r, f'ort@{one}', f'stepper@{one}')} | {_us(r, f'bf16@{one}')} | "
            f"{_ratio(r, f'stepper@{one}', f'bf16@{one}')} | {r['bf16_error']:.1e} | {_us(r, f'before@{one}')} | "
            f"{_us(r, f'normed@{one}')} |"
        )
    lines += [
        "",
        f"Training, forward + backward, {one} thread, ms per iteration; peak memory = growth of the process's peak "
        "resident set during one iteration (VmHWM reset through /proc/self/clear_refs after malloc_trim; median of 3; "
        "includes allocator overhead, so +-10-20 %):",
        "",
    ]
    variant_header = "".join(f"| {v}: grukit reference | {v}: grukit cpu | {v}: cpu vs reference " for v in VARIANTS)
    lines.append(
        "| T, B, H | torch.nn.GRU | grukit cpu | speed-up vs torch | peak MiB torch | peak MiB grukit "
        f"{variant_header}| torch.nn.GRUCell, T calls | grukit.GRUCell, T calls | cell speed-up |"
    )
    lines.append("|---" * (9 + 3 * len(VARIANTS)) + "|")
    for r in train:
        cells = "".join(
            f" {r[f'{v}_reference@{one}']:.2f} | {r[f'{v}_cpu@{one}']:.2f} | "
            f"{_ratio(r, f'{v}_reference@{one}', f'{v}_cpu@{one}')} |"
            for v in VARIANTS
        )
        lines.append(
            f"| {r['T']}, {r['B']}, {r['H']} | {r[f'torch@{one}']:.2f} | {r[f'grukit@{one}']:.2f} | "
            f"{_ratio(r, f'torch@{one}', f'grukit@{one}')} | {_mib(r['mem_torch'])} | {_mib(r['mem_grukit'])} |{cells}"
            f" {r[f'cell_torch@{one}']:.2f} | {r[f'cell_grukit@{one}']:.2f} | "
            f"{_ratio(r, f'cell_torch@{one}', f'cell_grukit@{one}')} |"
        )
    lines.append(
        "\nVariants torch.nn.GRU lacks, grukit.GRU in training under GRUKIT_BACKEND=reference (the pure-PyTorch loop) "
        "and =cpu: masked is recurrent_dropout=0.25 with zoneout=0.1 (new masks every call, applied inside the fused "
        "loop and its backward); layer_norm is layer_norm=True (the cpu backend's norm loop). The GRUCell columns "
        "unroll the drop-in cells over the T steps, one call per step (a decoder's loop), and backpropagate "
        "through all of them: each grukit call is a single fused step (weights read unpacked at B <= 4) "
        "and its own backward."
    )
    for n in more:
        lines += _threads_tables(one, n, infer, stream, train)
    lines.append(end)
    return "\n".join(lines) + "\n"


def _threads_tables(one: int, n: int, infer: list[dict], stream: list[dict], train: list[dict]) -> list[str]:
    """The n-thread columns beside the one-thread ones, from the same interleaved rounds."""
    lines = [
        "",
        f"{n} threads against {one} (same rounds; grukit splits a step's hidden units over two threads when the step's "
        f"estimated time, its FLOPs at 90 GFLOP/s or its weight bytes at 100 GB/s, is ≥ "
        f"{load_extension().split_ns() / 1e3:.0f} µs, else runs one; in training the backward through time too, and "
        "torch's GEMMs before and after the loops use torch's threads):",
        "",
        f"| case | torch.nn.GRU {n}t | onnxruntime {n}t | grukit {one}t | grukit {n}t | grukit {n}t / {one}t speed-up "
        f"| grukit {n}t vs torch {n}t | vs ort {n}t |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = [(f"inference B={r['B']} H={r['H']} (µs/step)", r, "torch", "ort", "grukit") for r in infer]
    cases += [(f"streaming H={r['H']} (µs/call)", r, "cell", "ort", "stepper") for r in stream]
    cases += [(f"training {r['T']}, {r['B']}, {r['H']} (ms)", r, "torch", None, "grukit") for r in train]
    for label, r, theirs, ort, ours in cases:
        ort_cells = (_us(r, f"{ort}@{n}"), _ratio(r, f"{ort}@{n}", f"{ours}@{n}")) if ort else ("-", "-")
        lines.append(
            f"| {label} | {_us(r, f'{theirs}@{n}')} | {ort_cells[0]} | {_us(r, f'{ours}@{one}')} | "
            f"{_us(r, f'{ours}@{n}')} | {_ratio(r, f'{ours}@{one}', f'{ours}@{n}')} | "
            f"{_ratio(r, f'{theirs}@{n}', f'{ours}@{n}')} | {ort_cells[1]} |"
        )
    return lines


def load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    os.environ[dispatch.ENV_VAR] = "cpu"  # grukit's column is the cpu backend or an error, never a silent fallback
    ext = load_extension()
    most = max(ARGS.threads)
    gate = "" if ARGS.quiet is None else "; " + wait_until_quiet(*ARGS.quiet, most, ARGS.quiet_wait)
    rate = sgemm_rate()
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = "not installed"
    command = "python bench/cpu.py " + " ".join(sys.argv[1:])
    load_before = load_average()
    scaling_before = sgemm_scaling(most) if most > 1 else None
    header = [
        f"- Machine: {machine()}; kernels built for {ext.vector_bytes() * 8}-bit vectors; measured torch sgemm "
        f"{rate:.0f} GFLOP/s on one thread (the floor column assumes the notes' 96 and their AMD EPYC bandwidths; "
        "'floor here' uses this rate and the read bandwidth measured here at the size of W_hh, '-' where that read is "
        "too short to time against torch.sum's call cost: then the notes' bandwidth).",
        "- Rounds: every call of a table once per round, each round in its own shuffled order (seeded), so that no "
        "call always follows the same one, each timed call right after an untimed call of its own (warm caches, as "
        "the floor assumes; cold calls below); medians over rounds.",
        f"- Threads: {', '.join(map(str, ARGS.threads))}, interleaved in the same rounds (torch.set_num_threads before "
        "each call, which sets grukit's too; onnxruntime: one session per intra_op_num_threads); OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, as the caller's environment has it; grukit's split on "
        f"{SPLIT_POOLS[ext.split_stats()['pool']]}.",
        f"- torch {torch.__version__}, onnxruntime {ort_version}, Python {platform.python_version()}.",
        f"- grukit cpu packed-weight cache: {ARGS.pack_cache} entries (opt-in, GRUKIT_CPU_PACK_CACHE; off by default;"
        " `--pack-cache 0` measures the default; the stepper never uses it).",
        f"- Date: {datetime.date.today().isoformat()}. Command: `{command.strip()}`{gate}.",
    ]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        if ARGS.quick:
            infer = inference(64, [1, 8], [64, 256], directory, rate)
            stream = streaming([8, 64, 256], directory)
            train = training([(64, 8, 64)])
        else:
            infer = inference(256, [1, 8, 64], [64, 256, 1024], directory, rate)
            stream = streaming([8, 64, 256, 1024], directory)
            train = training([(64, 8, 64), (64, 1, 256), (64, 32, 256)])
    header.append(
        f"- Load average (1, 5, 15 min) before the run: {load_before}; after: {load_average()} — the machine is shared "
        "(2 cores): other jobs inflate absolute times and above all the 2-thread columns."
    )
    cold = cold_calls()
    header.append(
        "- Cold calls (B = 1, H = 64, T = 256, 1 thread, µs per step; cold: after 5 ms of Python spinning, warm: right "
        "after a call of its own): "
        + ", ".join(f"{name} {c:.2f} cold, {w:.2f} warm ({c / w:.2f}x)" for name, (c, w) in cold.items())
        + ". On this shared VM something outside the process (other tenants, or the hypervisor) empties L2 and L3 "
        "within milliseconds (bench/micro/cold_caches.cpp), so a call that follows other work refetches its code and "
        "weights from memory."
    )
    if scaling_before is not None:
        header.append(
            f"- Torch sgemm (1024 x 1024) on {most} threads against one, the machine's own scaling for compute-bound "
            f"work: {scaling_before:.2f}x before the run, {sgemm_scaling(most):.2f}x after (about 1.9x when the "
            "other core is free; the grukit n-thread / 1-thread speed-ups below are bounded by it)."
        )
    names = section_names(ext.vector_bytes() * 8)
    section = markdown(names, header, infer, stream, train)
    publish(section, None if ARGS.no_write else Path(ARGS.out), names[0], names[1])


if __name__ == "__main__":
    main()
