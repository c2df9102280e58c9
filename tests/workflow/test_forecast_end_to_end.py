"""``grukit forecast train | val | predict | export`` end to end through ``python -m grukit`` on a tiny CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime  # noqa: F401 - the export check needs it
import pytest

from grukit.cli import main
from grukit.tasks.forecast.metrics import METRICS
from grukit.workflow.checkpoints import load_checkpoint
from tests.workflow.forecast_files import grukit, small_args, write_hourly_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small training run (30 days of hourly data plus 24 future rows) shared by the tests below."""
    folder = tmp_path_factory.mktemp("e2e")
    csv_path = write_hourly_csv(folder / "hourly.csv", days=30, future_hours=24)
    result = grukit("forecast", "train", f"data={csv_path}", *small_args(plots=True), cwd=folder)
    return folder, csv_path, result


def test_train_writes_the_run_folder(trained):
    folder, csv_path, result = trained
    assert result.returncode == 0, result.stderr
    run = folder / "runs" / "forecast" / "train"
    files = {p.relative_to(run).as_posix() for p in run.rglob("*")}
    assert {
        "config.json",
        "metrics.json",
        "results.csv",
        "weights/best.safetensors",
        "weights/last.safetensors",
        "curves.png",
        "forecast.png",
    } <= files
    assert not [f for f in files if f.endswith(".tmp")]
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(csv_path) and config["season"] == 24 and config["horizon"] == 24
    assert config["target"] == ["load"] and config["known"] == ["temp"]
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("model", "naive", "seasonal_naive"):
        assert set(metrics["test"][name]) == set(METRICS)
        assert all(np.isfinite(v) for v in metrics["test"][name].values())
    assert len(metrics["test_origins"]) == 2 and metrics["test_period"].startswith("2024-01-29T00:00")
    with open(run / "results.csv") as handle:
        history = list(csv.DictReader(handle))
    assert [row["epoch"] for row in history] == ["1", "2"] and "val_mase" in history[0]
    # progress lines on stderr, the table on stdout
    assert "epoch 1/2" in result.stderr and "epoch 2/2" in result.stderr
    assert "GRU" in result.stdout and "seasonal naive" in result.stdout and "MASE" in result.stdout
    _, _, meta = load_checkpoint(run)
    assert meta["config"]["hidden"] == 8 and meta["task_meta"]["known"] == ["temp"]


def test_a_second_run_never_overwrites(trained, monkeypatch, capsys):
    folder, csv_path, _ = trained
    before = (folder / "runs" / "forecast" / "train" / "metrics.json").read_bytes()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    assert main(["forecast", "train", f"data={csv_path}", *small_args(epochs=1)]) == 0
    assert (folder / "runs" / "forecast" / "train2" / "weights" / "best.safetensors").is_file()
    assert (folder / "runs" / "forecast" / "train" / "metrics.json").read_bytes() == before


def test_val_reproduces_the_test_metrics(trained):
    folder, _, _ = trained
    run = folder / "runs" / "forecast" / "train"
    result = grukit("forecast", "val", f"model={run}", cwd=folder)
    assert result.returncode == 0, result.stderr
    val_dir = folder / "runs" / "forecast" / "val"
    again = json.loads((val_dir / "metrics.json").read_text())
    first = json.loads((run / "metrics.json").read_text())
    assert again["test"]["model"] == pytest.approx(first["test"]["model"], rel=1e-6)


def test_predict_forecasts_the_future_rows(trained):
    folder, _, _ = trained
    result = grukit(
        "forecast", "predict", f"model={folder / 'runs/forecast/train/weights/best.safetensors'}", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    with open(folder / "runs" / "forecast" / "predict" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and list(rows[0]) == ["time", "target", "q0.1", "q0.5", "q0.9"]
    assert rows[0]["time"] == "2024-01-31T00:00:00" and rows[-1]["time"] == "2024-01-31T23:00:00"
    assert all(float(r["q0.1"]) <= float(r["q0.5"]) <= float(r["q0.9"]) for r in rows)


def test_predict_without_future_covariates_backtests_the_end(trained, monkeypatch, capsys):
    folder, _, _ = trained
    other = write_hourly_csv(folder / "no_future.csv", days=20, seed=1)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    assert main(["forecast", "predict", "model=runs/forecast/train", f"source={other}"]) == 0
    out, err = capsys.readouterr()
    assert "no known covariates (temp) for the 24 steps after its last load value" in err
    assert out.splitlines()[0] == "time,target,q0.1,q0.5,q0.9,actual"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_checks_the_exported_model(trained, fmt):
    folder, _, _ = trained
    result = grukit("forecast", "export", f"model={folder / 'runs/forecast/train'}", f"format={fmt}", cwd=folder)
    assert result.returncode == 0, result.stderr
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    assert (folder / "runs" / "forecast" / "train" / "weights" / f"best{suffix}").is_file()
    diff = float(result.stdout.rsplit("max abs diff ", 1)[1])
    assert diff < 1e-4


def test_val_without_model_uses_the_latest_run(trained, monkeypatch, capsys):
    folder, _, _ = trained
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    assert main(["forecast", "val", "verbose=false"]) == 0
    assert "using the latest trained model" in capsys.readouterr().err
