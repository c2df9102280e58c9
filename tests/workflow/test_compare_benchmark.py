"""``grukit TASK compare`` and ``grukit TASK benchmark`` end to end (the CLI's ``main``, in process) on tiny data,
for forecast and classify; every compared architecture's run reloads with ``Model.load`` and reproduces its
test metrics."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

import grukit
from grukit.backends import dispatch
from grukit.cli import main
from grukit.tasks.encoders import ARCHITECTURES
from tests.workflow.forecast_files import small_args, write_hourly_csv
from tests.workflow.test_classify_end_to_end import write_sequences

DATA = {
    "forecast": lambda folder: write_hourly_csv(folder / "hourly.csv", days=20),
    "classify": lambda folder: write_sequences(folder / "seqs.csv"),
}
SMALL = {"forecast": small_args(epochs=1), "classify": ["epochs=1", "hidden=8", "batch=16", "plots=false"]}


def run_cli(folder: Path, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``grukit ARGS`` run in ``folder`` with the reference backend."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(folder)
        patch.setenv(dispatch.ENV_VAR, "reference")
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=list(DATA))
def compared(request, tmp_path_factory):
    """``grukit TASK compare`` of every architecture on tiny data: (task, its compare folder, stdout)."""
    task = request.param
    folder = tmp_path_factory.mktemp(task)
    data = DATA[task](folder)
    status, out, err = run_cli(folder, task, "compare", f"data={data}", *SMALL[task])
    assert status == 0, err
    return task, folder / "runs" / task / "compare", out


def test_compare_prints_one_table_and_writes_its_files(compared):
    task, folder, out = compared
    summary = json.loads((folder / "compare.json").read_text())
    assert list(summary["models"]) == list(ARCHITECTURES)
    baselines = {"forecast": ["naive", "seasonal_naive"], "classify": ["majority"]}[task]
    assert list(summary["baselines"]) == baselines
    for arch, row in summary["models"].items():
        assert Path(row["run"]) == Path("runs", task, "compare", arch)  # relative to where it ran
        assert (folder / arch / "weights" / "best.safetensors").is_file()
        assert row["parameters"] > 0 and row["train_seconds"] > 0 and row["cpu_seconds"] > 0 and row["latency_ms"] > 0
        assert set(row["test"]) == set(summary["metrics"]) == set(summary["baselines"][baselines[0]])
        assert json.loads((folder / arch / "config.json").read_text())["model"] == arch
    # the same settings for every run
    configs = [json.loads((folder / arch / "config.json").read_text()) for arch in ARCHITECTURES]
    for key in ("epochs", "batch", "hidden", "seed", "lr", "data"):
        assert len({json.dumps(c[key]) for c in configs}) == 1, key
    with open(folder / "compare.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [row["model"] for row in table] == [*ARCHITECTURES, *baselines]
    # one table on stdout (each run's own output went to stderr)
    assert out.count(" params ") == 1 and "epoch 1/1" not in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if " params " in line)
    assert [line.split()[0] for line in lines[start + 1 : start + 5]] == ["GRU", "minGRU", "LSTM", "Transformer"]
    assert not list(folder.rglob("*.tmp"))


def test_each_compared_model_reloads_with_the_same_test_metrics(compared):
    _, folder, _ = compared
    summary = json.loads((folder / "compare.json").read_text())
    for arch in ARCHITECTURES:
        model = grukit.Model.load(folder / arch)
        assert model.cfg["model"] == arch and model.net.arch == arch
        again = model.val(project=str(folder / "val"), verbose=False)
        assert again["test"]["model"] == pytest.approx(summary["models"][arch]["test"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_benchmark_times_every_runtime_or_says_why_not(compared, arch, tmp_path):
    task, folder, _ = compared
    status, out, err = run_cli(tmp_path, task, "benchmark", f"model={folder / arch}", "project=out", "name=bench")
    assert status == 0, err
    report = json.loads((tmp_path / "out" / task / "bench" / "benchmark.json").read_text())
    rows = {row["name"]: row for row in report["results"]}
    baseline = "reference" if arch == "gru" else "pytorch"
    assert set(rows) == {*dispatch.names(), "onnxruntime"} | {baseline}
    assert rows[baseline]["median_ms"] > 0 and rows[baseline]["speedup"] == 1.0
    assert rows[baseline]["max_abs_diff"] == 0.0
    for row in rows.values():  # every runtime either ran (agreeing with the baseline) or says why not
        assert (row["median_ms"] is not None and row["max_abs_diff"] < 1e-4) != bool(row["reason"]), row
        assert row["name"] in out
    if arch == "lstm":
        assert all(rows[name]["reason"].startswith("not used") for name in dispatch.names())
    if task == "forecast" and arch == "gru":
        assert rows["onnxruntime"]["median_ms"] > 0  # the forecaster's GRU exports to ONNX
    assert report["batch"] > 0 and report["rounds"] >= 5 and "speed vs " + baseline in out


def test_unknown_architecture_names_the_closest(tmp_path):
    status, _, err = run_cli(tmp_path, "forecast", "compare", "models=gru,lstn")
    assert status == 2 and "unknown architecture 'lstn' (did you mean 'lstm'?)" in err
    status, _, err = run_cli(tmp_path, "classify", "train", "model=transfomer")
    assert status == 2 and "(did you mean 'transformer'?)" in err and "Traceback" not in err
    status, _, err = run_cli(tmp_path, "forecast", "compare", "model=gru")
    assert status == 2 and "compare trains each architecture from scratch" in err
    data = write_sequences(tmp_path / "seqs.csv", per_class=4)
    status, _, err = run_cli(tmp_path, "classify", "compare", f"data={data}", "layer_norm=true")
    assert status == 2 and "layer_norm=true is a grukit.GRU option; model=mingru has none" in err
    assert not (tmp_path / "runs").exists()  # checked before any training
