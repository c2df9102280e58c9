"""Two builds of the cpu extension in one process: a kernel change against the build before it.

    python bench/ab_builds.py OLD.so [--threads 1] [--rounds 31] [--atol 0] [CASE ...]

OLD.so is an earlier build from the cache (``~/.cache/grukit/cpu-<hash>/grukit_cpu_<hash>.so``: each source
version builds under its own hash, so the build before a change stays there); the new one is the working tree's
(``load_extension``). Both modules load side by side (their names differ) and run the same calls in alternating
rounds, so both see the same machine state: on this shared machine, timings of separate processes drift by more
than the few per cent a kernel change is worth. Prints, per case, the medians, old / new, and in how many rounds
the new build was faster; outputs must agree bit for bit (a speed change must not change results), or with
``--atol A`` to within A (a change that reorders a sum, stated in its commit). Both builds share one thread team
(``Team::instance()``'s static is a GNU unique symbol, which the loader binds once per process), so a change to
team.h cannot be timed this way: time it in separate processes.

Cases: ``sH`` the fused stepper at B = 1, hidden H (``s256``), ``bH`` the same with bfloat16 weights; ``fBxH`` /
``rBxH`` ext.forward (eval, T = 256, input = hidden) in the reset_after / reset_before form (``f1x64``,
``r8x256``; ``f1x64t16``: T = 16, the calls of a round adding up to 256 steps); ``tBxH`` a training layer call
(ext.layer, reset_after, T = 64) and its backward (``t1x256``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from grukit.backends.cpu import load_extension

DEFAULT_CASES = ["s64", "s256", "f1x64", "f1x256", "f1x1024", "f8x64", "r1x64", "r8x64"]


def load_module(path: Path) -> ModuleType:
    """An extension module from its .so file (its module name is the file's stem)."""
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension module (expected a grukit_cpu_<hash>...so file)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Call = Callable[[], object]


def alternate(old: Call, new: Call, calls: int, rounds: int) -> tuple[float, float, int]:
    """(old µs, new µs, rounds the new one won): medians over rounds of `calls` calls each, the two alternating."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(rounds):
        for name, fn in (("old", old), ("new", new))[:: 1 if i % 2 == 0 else -1]:  # each goes first every other round
            fn()  # warm: this build's buffers and code
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    wins = sum(a > b for a, b in zip(times["old"], times["new"], strict=True))
    return statistics.median(times["old"]), statistics.median(times["new"]), wins


def case_calls(case: str, old: ModuleType, new: ModuleType, atol: float) -> tuple[str, Call, Call, int]:
    """(label, old call, new call, calls per round) for one case name, the two outputs checked equal (to within
    atol) first."""
    torch.manual_seed(0)
    if case[0] in "sb":
        hidden, bf16 = int(case[1:]), case[0] == "b"
        gru = torch.nn.GRU(hidden, hidden)
        layers = [[p.detach() for p in gru.parameters()]]
        steppers = [ext.Stepper(layers, [], bf16, True, 0.0) for ext in (old, new)]
        x, h = torch.randn(1, hidden), torch.zeros(1, 1, hidden)
        outputs = [s.step(x, h) for s in steppers]
        label, calls = f"{'bf16 ' if bf16 else ''}stepper B=1 H={hidden}", 50 if hidden < 1024 else 5
        fns = [lambda s=s: s.step(x, h) for s in steppers]
    elif case[0] in "fr":
        reset_after = case[0] == "f"
        shape, _, steps = case[1:].partition("t")
        batch, hidden = (int(v) for v in shape.split("x"))
        steps = int(steps or 256)
        gru = torch.nn.GRU(hidden, hidden)
        weights = [p.detach() for p in gru.parameters()]
        x, h0 = torch.randn(steps, batch, hidden), torch.zeros(batch, hidden)
        fns = [lambda e=ext: e.forward(x, h0, *weights, None, reset_after, False, False) for ext in (old, new)]
        outputs = [fn()[:2] for fn in fns]
        form = "reset_after" if reset_after else "reset_before"
        label, calls = f"forward {form} B={batch} H={hidden} T={steps}", max(1, 256 // steps)
    elif case[0] == "t":
        batch, hidden = (int(v) for v in case[1:].split("x"))
        gru = torch.nn.GRU(hidden, hidden)
        weights = [p.detach().requires_grad_() for p in gru.parameters()]
        x, h0 = torch.randn(64, batch, hidden), torch.zeros(batch, hidden)

        def train(ext: ModuleType) -> list[torch.Tensor]:
            with torch.enable_grad():
                y, h_n = ext.layer(x, h0, *weights, None, True, False, None, None, 0.0)
                grads = torch.autograd.grad(y.square().sum() + h_n.sum(), weights)
            return [y.detach(), *grads]

        fns = [lambda e=ext: train(e) for ext in (old, new)]
        outputs = [fn() for fn in fns]
        label, calls = f"training forward + backward B={batch} H={hidden} T=64", 1
    else:
        raise SystemExit(f"unknown case {case!r}: sH, bH, fBxH, rBxH or tBxH (see the docstring)")
    for a, b in zip(*outputs, strict=True):
        if not (torch.equal(a, b) if atol == 0 else torch.allclose(a, b, rtol=0, atol=atol)):
            raise SystemExit(f"{label}: the builds' outputs differ by {(a - b).abs().max().item():.3g}")
    return label, fns[0], fns[1], calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path, help="the earlier build's .so file")
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--atol", type=float, default=0.0, help="outputs may differ by this much (0: bit for bit)")
    args = parser.parse_args()
    if not args.old.is_file():
        raise SystemExit(f"{args.old}: no such file (list the builds with: ls ~/.cache/grukit/*/*.so)")
    torch.set_num_threads(args.threads)
    new, old = load_extension(), load_module(args.old)
    if Path(new.__file__).resolve() == args.old.resolve():
        raise SystemExit(f"{args.old} is the working tree's own build: name an earlier one")
    with torch.no_grad():
        for case in args.cases:
            label, old_fn, new_fn, calls = case_calls(case, old, new, args.atol)
            a, b, wins = alternate(old_fn, new_fn, calls, args.rounds)
            print(f"{label}: old {a:.2f} us, new {b:.2f} us, old/new {a / b:.3f} (new faster in {wins}/{args.rounds})")


if __name__ == "__main__":
    main()
