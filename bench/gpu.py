"""GPU benchmark: grukit's Triton backend against torch.nn.GRU (cuDNN) in the same run, on one CUDA device.

    python bench/gpu.py [--quick] [--budget 420] [--out BENCHMARKS.md] [--no-write] [--dry-run]

1. Correctness on the GPU first: the Triton backend (both kernel paths, both equation forms, bidirectional with
   lengths, float32 and bfloat16, and the MinGRU scan) against the float64 reference backend, forward and backward.
2. GRU timings: B in {1, 8, 64, 512}, H in {128, 256, 512, 1024}, T in {256, 1024}, input = hidden, bfloat16 and
   float32, forward (inference, no grad) and forward + backward (training: the Triton backward kernels) as columns
   of one row, grukit (GRUKIT_BACKEND=triton, so a call it cannot serve raises instead of silently timing the
   reference) against torch.nn.GRU with the same weights. Medians of CUDA-event timings.
3. MinGRU training (parallel scan) against cuDNN GRU training at T = 4096.

The table goes into BENCHMARKS.md between this script's markers (the "## GPU" section; other sections are left
alone). Rows still running when the time budget (default 420 s, for the 8-minute limit) runs out are marked
skipped. Exits with status 2 when there is no CUDA device, 1 when a correctness check failed (after writing).
``--dry-run`` runs the whole script on the CPU under the Triton interpreter with tiny shapes (wall-clock timings,
nothing written): a check that the script works, for machines without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import write_section  # noqa: E402 (bench/report.py, beside this script)

import grukit  # noqa: E402
from grukit.backends import dispatch  # noqa: E402
from grukit.backends.triton import configs  # noqa: E402

START, END = "<!-- bench/gpu.py: start -->", "<!-- bench/gpu.py: end -->"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B in {1, 64}, H in {128, 512}, T = 256 only")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the timings (default 420)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes, no writing")
    return parser.parse_args()


DRY_RUN = False


def use_backend(name: str) -> None:
    os.environ[dispatch.ENV_VAR] = name


# ------------------------------------------------------------------------------------------ correctness


def _grads_of(module: torch.nn.Module, x: torch.Tensor, h0: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """[y, h_n, dx, dh0, d(every parameter)] of a weighted loss. x: (T, B, I), h0: (L·D, B, H)."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    y, h_n = module(x, h0, **kwargs)
    weights = torch.linspace(-1, 1, y.numel(), device=y.device, dtype=torch.float64).reshape(y.shape)
    ((y.double() * weights).sum() + (h_n.double() ** 2).sum()).backward()
    return [y.detach(), h_n.detach(), x.grad, h0.grad, *(p.grad for p in module.parameters())]


def _error(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs error of the outputs, max error of the gradients relative to each gradient's largest entry)."""
    forward = max((g.double() - w).abs().max().item() for g, w in zip(got[:2], want[:2], strict=True))
    backward = max(
        (g.double() - w).abs().max().item() / max(w.abs().max().item(), 1e-30)
        for g, w in zip(got[2:], want[2:], strict=True)
    )
    return forward, backward


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values exactly representable in ``dtype``: the reference then sees the same inputs and weights, so
    the check measures the kernels' error, not the rounding of the data."""
    return t.to(dtype).double()


def correctness(device: torch.device) -> list[tuple[str, float, float, bool]]:
    """Rows (case, forward error, relative gradient error, ok) against the float64 reference on ``device``."""
    # float32 dots run in IEEE fp32 in the kernels; the input projection is a cuBLAS GEMM (TF32 off by default)
    tolerance = {"fp32": (1e-4, 1e-3), "bf16": (5e-2, 1e-1)}
    rows = []
    torch.manual_seed(0)
    cases = [("fp32", 64, "persistent"), ("fp32", 200, "step"), ("bf16", 128, "persistent"), ("bf16", 256, "step")]
    steps, batch, inputs, scan_steps = 50, 24, 32, 1000
    if DRY_RUN:
        cases = [("fp32", 16, "persistent"), ("fp32", 40, "step"), ("bf16", 16, "persistent"), ("bf16", 40, "step")]
        steps, batch, inputs, scan_steps = 5, 3, 4, 40
    for dtype_name, hidden, path in cases:
        for reset_after in (True, False):
            case = f"GRU {dtype_name} H={hidden} {path} reset_after={reset_after} bidirectional lengths"
            try:
                gru64 = grukit.GRU(inputs, hidden, bidirectional=True, reset_after=reset_after, device=device)
                gru64 = gru64.double()
                x = torch.randn(steps, batch, inputs, device=device, dtype=torch.float64)
                h0 = 0.5 * torch.randn(2, batch, hidden, device=device, dtype=torch.float64)
                lengths = torch.randint(1, steps + 1, (batch,), device=device)
                dtype = DTYPES[dtype_name]
                x, h0 = _rounded(x, dtype), _rounded(h0, dtype)
                gru64.load_state_dict({k: _rounded(v, dtype) for k, v in gru64.state_dict().items()})
                use_backend("reference")
                want = _grads_of(gru64, x, h0, lengths=lengths)
                gru = grukit.GRU(
                    inputs, hidden, bidirectional=True, reset_after=reset_after, device=device, dtype=dtype
                )
                gru.load_state_dict(gru64.state_dict())
                use_backend("triton")
                os.environ[configs.PATH_ENV] = path
                got = _grads_of(gru, x.to(dtype), h0.to(dtype), lengths=lengths)
                fwd, bwd = _error(got, want)
                rows.append((case, fwd, bwd, fwd <= tolerance[dtype_name][0] and bwd <= tolerance[dtype_name][1]))
            except Exception:
                traceback.print_exc()
                rows.append((case, float("nan"), float("nan"), False))
            finally:
                os.environ.pop(configs.PATH_ENV, None)
    for dtype_name in DTYPES:
        case = f"MinGRU scan {dtype_name} T={scan_steps}"
        try:
            mingru64 = grukit.MinGRU(inputs, 128, device=device).double()
            x = torch.randn(scan_steps, batch, inputs, device=device, dtype=torch.float64)
            h0 = torch.randn(1, batch, 128, device=device, dtype=torch.float64)
            dtype = DTYPES[dtype_name]
            x, h0 = _rounded(x, dtype), _rounded(h0, dtype)
            mingru64.load_state_dict({k: _rounded(v, dtype) for k, v in mingru64.state_dict().items()})
            use_backend("reference")
            want = _grads_of(mingru64, x, h0)
            mingru = grukit.MinGRU(inputs, 128, device=device, dtype=dtype)
            mingru.load_state_dict(mingru64.state_dict())
            use_backend("triton")
            got = _grads_of(mingru, x.to(dtype), h0.to(dtype))
            fwd, bwd = _error(got, want)
            rows.append((case, fwd, bwd, fwd <= tolerance[dtype_name][0] and bwd <= tolerance[dtype_name][1]))
        except Exception:
            traceback.print_exc()
            rows.append((case, float("nan"), float("nan"), False))
    return rows


# ------------------------------------------------------------------------------------------ timing


def cuda_median_ms(fn, budget_s: float = 1.5, min_reps: int = 3, max_reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` by CUDA events, after one warm-up call (which also compiles kernels)."""
    fn()
    if DRY_RUN:
        min_reps = max_reps = 1
    else:
        torch.cuda.synchronize()
    times = []
    spent = time.perf_counter()
    for _ in range(max_reps):
        if DRY_RUN:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= min_reps and time.perf_counter() - spent > budget_s:
            break
    return statistics.median(times)


def _step(module: torch.nn.Module, x: torch.Tensor, train: bool):
    def run():
        if train:
            module.zero_grad(set_to_none=True)
            y, h_n = module(x)
            (y.float().sum() + h_n.float().sum()).backward()
        else:
            with torch.no_grad():
                module(x)

    return run


def time_pair(make_torch, make_grukit, x: torch.Tensor, train: bool) -> tuple[str, str, str]:
    """(grukit ms, cuDNN ms, cuDNN / grukit) as table cells; errors and OOM become the cell's text."""
    cells = []
    for backend, make in (("triton", make_grukit), (None, make_torch)):
        try:
            if backend is not None:
                use_backend(backend)
            module = make()
            cells.append(cuda_median_ms(_step(module, x, train)))
        except torch.cuda.OutOfMemoryError:
            cells.append("OOM")
        except Exception as err:
            traceback.print_exc()
            cells.append(f"error: {type(err).__name__}")
        finally:
            module = None
            if not DRY_RUN:
                torch.cuda.empty_cache()
    ours, theirs = cells
    ratio = f"{theirs / ours:.2f}x" if isinstance(ours, float) and isinstance(theirs, float) else "-"
    ours, theirs = (f"{c:.2f}" if isinstance(c, float) else c for c in (ours, theirs))
    return ours, theirs, ratio


def gru_rows(device: torch.device, quick: bool, deadline: float) -> list[list[str]]:
    batches, hiddens, steps_list = [1, 8, 64, 512], [128, 256, 512, 1024], [256, 1024]
    if quick:
        batches, hiddens, steps_list = [1, 64], [128, 512], [256]
    if DRY_RUN:
        batches, hiddens, steps_list = [1, 17], [16, 80], [3]
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for steps in steps_list:
            for batch in batches:
                for hidden in hiddens:
                    # (the dry run computes bfloat16 in float32, as the backend does under the interpreter)
                    path = configs.choose_path(batch, hidden, torch.float32 if DRY_RUN else dtype)
                    head = [dtype_name, str(batch), str(hidden), str(steps), path]
                    if time.perf_counter() > deadline:
                        rows.append([*head, "skipped (time budget)", *[""] * 5])
                        continue
                    torch.manual_seed(0)
                    x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
                    reference = torch.nn.GRU(hidden, hidden, device=device, dtype=dtype)
                    cells = []
                    for train in (False, True):  # forward (inference), then forward + backward (training)
                        cells += time_pair(
                            lambda ref=reference: ref,
                            lambda ref=reference: grukit.GRU.from_torch(ref),
                            x,
                            train,
                        )
                    rows.append([*head, *cells])
                    print(" | ".join(rows[-1]), flush=True)
                    del reference, x
    return rows


def mingru_rows(device: torch.device, deadline: float) -> list[list[str]]:
    """MinGRU (Triton scan) training against cuDNN GRU training, T = 4096, input = hidden = 256."""
    rows = []
    steps, hidden = (40, 16) if DRY_RUN else (4096, 256)
    for dtype_name, dtype in DTYPES.items():
        for batch in (2,) if DRY_RUN else (8, 64):
            head = [dtype_name, str(batch), str(hidden), str(steps)]
            if time.perf_counter() > deadline:
                rows.append([*head, "skipped (time budget)", "", ""])
                continue
            torch.manual_seed(0)
            x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
            cells = time_pair(
                lambda dtype=dtype: torch.nn.GRU(hidden, hidden, device=device, dtype=dtype),
                lambda dtype=dtype: grukit.MinGRU(hidden, hidden, device=device, dtype=dtype),
                x,
                train=True,
            )
            rows.append([*head, *cells])
            print(" | ".join(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------ report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def section(device_name: str, checks, gru, mingru, seconds: float, device: torch.device) -> str:
    import triton

    date = datetime.date.today().isoformat()
    lines = [START, "## GPU (bench/gpu.py)", ""]
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    lines.append(
        f"{device_name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
        f"triton {triton.__version__}; {date}; the whole run took {seconds:.0f} s."
    )
    lines += [
        "",
        "Correctness against the float64 reference backend on the GPU (max abs error of y and h_n; largest "
        "gradient error relative to that gradient's largest entry):",
        "",
    ]
    lines += _table(
        ["case", "forward", "gradients", "ok"],
        [[c, f"{f:.2e}", f"{b:.2e}", "yes" if ok else "**FAILED**"] for c, f, b, ok in checks],
    )
    lines += [
        "",
        "GRU, input = hidden, one layer, milliseconds per call (CUDA-event medians); ratio = cuDNN time / grukit "
        "time (> 1: grukit is faster). fwd: inference without autograd; fwd+bwd: forward and backward of a sum "
        "loss (grukit's backward runs the Triton backward kernels on the same path as its forward).",
        "",
    ]
    modes = ["grukit ms", "cuDNN ms", "ratio"]
    header = ["dtype", "B", "H", "T", "grukit path", *(f"fwd {m}" for m in modes), *(f"fwd+bwd {m}" for m in modes)]
    lines += _table(header, gru)
    lines += ["", "MinGRU training (Triton scan, forward + backward) against cuDNN GRU training, input = hidden:", ""]
    lines += _table(["dtype", "B", "H", "T", "MinGRU ms", "cuDNN GRU ms", "ratio"], mingru)
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> int:
    global DRY_RUN
    args = _args()
    DRY_RUN = args.dry_run
    if DRY_RUN:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (grukit imports it lazily)
        args.no_write = True
    elif not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA device, and torch.cuda.is_available() is False: nothing to measure.")
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench/gpu.py needs triton: pip install triton==3.7.1 (the version torch's CUDA build pins).")
        return 2
    if not DRY_RUN and os.environ.pop("TRITON_INTERPRET", None) not in (None, "", "0"):
        print("note: TRITON_INTERPRET was set; bench/gpu.py unset it to compile the kernels for the GPU")
    started = time.perf_counter()
    device = torch.device("cpu" if DRY_RUN else "cuda")
    name = "CPU dry run (Triton interpreter)" if DRY_RUN else torch.cuda.get_device_name(device)
    print(f"{name}: correctness first", flush=True)
    checks = correctness(device)
    for case, fwd, bwd, ok in checks:
        print(f"{'ok    ' if ok else 'FAILED'} {case}: forward {fwd:.2e}, gradients {bwd:.2e}", flush=True)
    deadline = started + args.budget
    print("GRU timings: dtype | B | H | T | path | fwd: grukit ms | cuDNN ms | ratio | fwd+bwd: same", flush=True)
    gru = gru_rows(device, args.quick, deadline - 60)  # keep a minute for the MinGRU rows
    print("MinGRU training: dtype | B | H | T | MinGRU ms | cuDNN GRU ms | ratio", flush=True)
    mingru = mingru_rows(device, deadline)
    text = section(name, checks, gru, mingru, time.perf_counter() - started, device)
    if args.no_write:
        print(text)
    else:
        write_section(Path(args.out), text, START, END)
        print(f"wrote the GPU section of {args.out}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
