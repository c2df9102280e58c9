"""Forecast and classify training on a file several times bigger than the memory it may use (``stream=true``).

Forecast: a synthetic hourly Parquet file (load with a daily cycle, temperature, 14 past covariates). Classify:
a synthetic long-format Parquet file of numeric sequences (id, step, FEATURES features, 4 classes; the rows of
each sequence together). Each is written row group by row group (so writing it is bounded too), then
``grukit TASK train data=FILE stream=true sample=...`` runs in a child process whose address space is capped
with RLIMIT_AS (``--limit-mb``; torch and pyarrow alone map over 1 GiB of it), and the child's peak resident
memory (ru_maxrss) is reported beside the file's size; for contrast the same command without ``stream=true``
under the same cap, which loads the whole file and so fails. Each case writes its own section of BENCHMARKS.md
(``--no-write``: print only).

    python bench/memory.py                                         # both: 6.1 GiB forecast file, 2048 MiB cap
    python bench/memory.py --case classify                         # a 5.8 GiB classify file
    python bench/memory.py --case classify --rows 600000 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # bench/report.py, beside this script

START, END = "<!-- bench/memory.py: start -->", "<!-- bench/memory.py: end -->"
CLASSIFY_START, CLASSIFY_END = "<!-- bench/memory.py classify: start -->", "<!-- bench/memory.py classify: end -->"
GROUP = 100_000  # rows per Parquet row group written (pyarrow reads a whole row group at a time)
WINDOWS = 20_000  # training windows drawn per epoch (sample = WINDOWS / rows)
PAST = 14  # past covariates p1..p14 besides time, load and temp: 136 bytes a row
FEATURES = 192  # classify: features f1..f192 besides id, step and label: 1560 bytes a row
SEQUENCES = 4_000  # classify: training sequences drawn per epoch (sample = SEQUENCES / sequences)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["forecast", "classify", "all"], default="all")
    parser.add_argument("--rows", type=int, default=0, help="rows in the file; 0: 48M hourly rows (136 bytes each) "
                        "for forecast, 4M sequence steps (1560 bytes each) for classify")
    parser.add_argument("--limit-mb", type=int, default=2048, help="RLIMIT_AS of the training process, MiB")
    parser.add_argument("--folder", default=None, help="where to write the file (default: a temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    return parser.parse_args()


def write_file(path: Path, rows: int) -> None:
    """An hourly series of ``rows`` rows (time, load, temp, p1..pPAST), one row group of GROUP rows at a time."""
    names = ["load", "temp", *(f"p{i + 1}" for i in range(PAST))]
    schema = pa.schema([("time", pa.timestamp("s")), *((name, pa.float64()) for name in names)])
    rng = np.random.default_rng(0)
    start = np.datetime64("2000-01-01T00:00", "s")
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as writer:
        for first in range(0, rows, GROUP):
            hours = np.arange(first, min(rows, first + GROUP))
            temp = 20 + 5 * np.sin(2 * np.pi * hours / 24 - 1) + rng.normal(0, 1, len(hours))
            load = 10 + 3 * np.sin(2 * np.pi * hours / 24) + 0.2 * temp + rng.normal(0, 0.3, len(hours))
            times = start + hours.astype("timedelta64[h]")
            past = load[:, None] * rng.uniform(0.9, 1.1, (len(hours), PAST))  # noisy copies of the load
            columns = {"time": times, "load": load, "temp": temp, **{n: past[:, i] for i, n in enumerate(names[2:])}}
            writer.write_table(pa.table(columns, schema=schema))


def write_sequences(path: Path, rows: int) -> int:
    """Long-format sequences of ``rows`` rows in all (id, step, f1..fFEATURES, label), lengths 32..95, the rows
    of each sequence together, one row group of about GROUP rows at a time; the number of sequences. Class c
    adds a sine of frequency c + 1 to the first feature."""
    names = [f"f{i + 1}" for i in range(FEATURES)]
    fields = [("id", pa.int64()), ("step", pa.int64()), *((n, pa.float64()) for n in names), ("label", pa.int64())]
    schema = pa.schema(fields)
    rng = np.random.default_rng(0)
    written = sequence = 0
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as writer:
        while written < rows:
            lengths = rng.integers(32, 96, GROUP // 400)  # 250 sequences, about 16,000 rows (25 MB)
            lengths = lengths[np.cumsum(lengths) <= rows - written] if lengths.sum() > rows - written else lengths
            if not len(lengths):
                lengths = np.array([rows - written])
            ids = np.repeat(np.arange(sequence, sequence + len(lengths)), lengths)
            steps = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            labels = np.repeat(rng.integers(0, 4, len(lengths)), lengths)
            values = rng.normal(0, 1, (len(ids), FEATURES))
            values[:, 0] += np.sin((labels + 1) * steps / 8)
            columns = {"id": ids, "step": steps, **{n: values[:, i] for i, n in enumerate(names)}, "label": labels}
            writer.write_table(pa.table(columns, schema=schema))
            written, sequence = written + len(ids), sequence + len(lengths)
    return sequence


def run(task: str, args: list[str], limit: int, folder: Path, name: str) -> dict:
    """``python -m grukit TASK train ARGS`` with RLIMIT_AS ``limit`` bytes: exit status, peak RSS (MiB),
    seconds, last line of the output."""
    # pyarrow's default jemalloc pool reserves far more address space than it uses: the system allocator
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRUKIT_BACKEND": "reference", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    log = folder / f"{name}.log"

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    with log.open("w") as out:
        command = [sys.executable, "-m", "grukit", task, "train", *args]
        child = subprocess.Popen(command, stdout=out, stderr=out, env=env, preexec_fn=cap)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return {
        "status": os.waitstatus_to_exitcode(status),
        "rss": usage.ru_maxrss / 1024,
        "seconds": seconds,
        "last": lines[-1] if lines else "",
        "log": log,
    }


def _table(rows: list[tuple[str, dict]], size: int) -> str:
    """The markdown rows of ``rows`` ((name, run result)) beside a file of ``size`` bytes."""
    return "\n".join(
        f"| {name} | {'completed' if r['status'] == 0 else 'failed (exit ' + str(r['status']) + ')'} | "
        f"{r['rss']:.0f} MiB | {r['rss'] * 2**20 / size:.2f} | {r['seconds']:.0f} s |"
        for name, r in rows
    )


def classify_case(opts: argparse.Namespace) -> None:
    """The classify run and its section (see the module docstring)."""
    limit, n_rows = opts.limit_mb * 2**20, opts.rows or 4_000_000
    with tempfile.TemporaryDirectory(dir=opts.folder) as tmp:
        folder = Path(tmp)
        path = folder / "big.parquet"
        start = time.perf_counter()
        n_seqs = write_sequences(path, n_rows)
        size = path.stat().st_size
        print(f"wrote {path.name}: {n_rows} rows, {n_seqs} sequences, {size / 2**30:.2f} GiB in "
              f"{time.perf_counter() - start:.0f} s")
        common = [f"data={path}", "epochs=1", "hidden=16", "batch=64", "val_fraction=0.002", "test_fraction=0.002"]
        common += ["plots=false", f"project={folder / 'runs'}"]
        sample = min(1.0, SEQUENCES / n_seqs)
        streamed = run("classify", [*common, "stream=true", f"sample={sample:.3g}", "name=streamed"], limit, folder,
                       "streamed")
        log = streamed["log"].read_text()
        print(log)
        whole = run("classify", [*common, "name=whole"], limit, folder, "whole")
        print(whole["last"])
    held = next((line for line in log.splitlines() if "grukit classify train:" in line), "").split("; run folder")[0]
    section = f"""{CLASSIFY_START}
## Classify data bigger than memory (bench/memory.py --case classify)

`grukit classify train data=big.parquet stream=true sample={sample:.3g} epochs=1 hidden=16 batch=64
val_fraction=0.002 test_fraction=0.002` on a synthetic long-format Parquet file of {n_rows:,} rows
({n_seqs:,} sequences of 32-95 steps, {FEATURES} features, 4 classes), **{size / 2**30:.2f} GiB**
(uncompressed), in a process capped at **{opts.limit_mb} MiB** of address space (RLIMIT_AS; the file is
{size / limit:.1f} times the cap). Peak RSS is the process's ru_maxrss. {platform.machine()}, {os.cpu_count()}
cores, 1 torch thread, `GRUKIT_BACKEND=reference`, `ARROW_DEFAULT_MEMORY_POOL=system`.

| run | result | peak RSS | peak RSS / file size | wall |
|---|---|---|---|---|
{_table([("stream=true", streamed), ("whole file (stream=false)", whole)], size)}

The streamed run reads chunks of 10,000 rows (a sequence crossing a chunk's end waits for the next chunk's
rows) in three passes: the checks, the classes and the split; the held-out sequences (in memory: keep them few)
and the feature scaling; then each epoch's training sequences through a shuffle buffer of 1,024 sequences.
Its description line: `{held[:300]}`
Last line of the whole-file run: `{whole['last'][:200]}`
{CLASSIFY_END}"""
    publish(section, None if opts.no_write else Path(opts.out), CLASSIFY_START, CLASSIFY_END)


def main() -> None:
    opts = _args()
    if opts.case in ("classify", "all"):
        classify_case(opts)
    if opts.case in ("forecast", "all"):
        forecast_case(opts)


def forecast_case(opts: argparse.Namespace) -> None:
    """The forecast run and its section (see the module docstring)."""
    limit = opts.limit_mb * 2**20
    opts.rows = opts.rows or 48_000_000
    with tempfile.TemporaryDirectory(dir=opts.folder) as tmp:
        folder = Path(tmp)
        path = folder / "big.parquet"
        start = time.perf_counter()
        write_file(path, opts.rows)
        size = path.stat().st_size
        print(f"wrote {path.name}: {opts.rows} rows, {size / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s")
        past = ",".join(f"p{i + 1}" for i in range(PAST))
        common = [f"data={path}", "target=load", "known=temp", f"past={past}", "epochs=1", "hidden=16", "lookback=48"]
        common += ["test_windows=2", "val_windows=2", "plots=false", f"project={folder / 'runs'}"]
        sample = min(1.0, WINDOWS / opts.rows)
        streamed = run("forecast", [*common, "stream=true", f"sample={sample:.3g}", "name=streamed"], limit, folder,
                       "streamed")
        print(streamed["log"].read_text())
        whole = run("forecast", [*common, "name=whole"], limit, folder, "whole")
        print(whole["last"])
    table = _table([("stream=true", streamed), ("whole file (stream=false)", whole)], size)
    section = f"""{START}
## Data bigger than memory (bench/memory.py)

`grukit forecast train data=big.parquet stream=true sample={sample:.3g} epochs=1 hidden=16 lookback=48 ...` on a
synthetic hourly Parquet file of {opts.rows:,} rows, **{size / 2**30:.2f} GiB** (uncompressed; time, load,
temperature and {PAST} past covariates), in a process capped at **{opts.limit_mb} MiB** of address space
(RLIMIT_AS; the file is {size / limit:.1f} times the cap). Peak RSS is the process's ru_maxrss (about 0.25 GiB
of it is Python, torch and grukit loaded). {platform.machine()}, {os.cpu_count()} cores, 1 torch thread,
`GRUKIT_BACKEND=reference`, `ARROW_DEFAULT_MEMORY_POOL=system` (jemalloc reserves more address space).

| run | result | peak RSS | peak RSS / file size | wall |
|---|---|---|---|---|
{table}

The streamed run holds one chunk of 50,000 rows at a time (three passes: checks and the tail, covariate and
MASE statistics, then each epoch's windows); the whole-file run is the same command without `stream=true`.
Last line of the whole-file run: `{whole['last'][:200]}`
{END}"""
    publish(section, None if opts.no_write else Path(opts.out), START, END)


if __name__ == "__main__":
    main()
