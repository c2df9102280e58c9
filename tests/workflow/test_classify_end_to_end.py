"""``grukit classify train | val | predict | export`` end to end through ``python -m grukit`` on a small CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from grukit.tasks.classify.metrics import METRICS
from tests.workflow.forecast_files import grukit

SMALL = ["epochs=3", "hidden=8", "batch=16", "verbose=true", "plots=true"]


def write_sequences(path: Path, per_class: int = 12, labels: tuple[str, ...] = ("up", "down", "flat")) -> Path:
    """Long-format CSV: seq, step, a, b, label; variable lengths 5..9; each class a different trend."""
    rng = np.random.default_rng(0)
    slope = {"up": 1.0, "down": -1.0, "flat": 0.0, "wobble": 0.5}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seq", "step", "a", "b", "label"])
        number = 0
        for label in labels:
            for _ in range(per_class):
                number += 1
                for step in range(int(rng.integers(5, 10))):
                    a = slope[label] * step + rng.normal(0, 0.3)
                    writer.writerow([f"s{number}", step, f"{a:.4f}", f"{rng.normal():.4f}", label])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    data = write_sequences(folder / "seqs.csv")
    result = grukit("classify", "train", f"data={data}", *SMALL, cwd=folder)
    return folder, data, result


def test_train_writes_the_run_folder(trained):
    folder, _, result = trained
    assert result.returncode == 0, result.stderr
    run = folder / "runs" / "classify" / "train"
    files = {p.relative_to(run).as_posix() for p in run.rglob("*")}
    assert {"config.json", "metrics.json", "results.csv", "weights/best.safetensors", "confusion.png"} <= files
    config = json.loads((run / "config.json").read_text())
    assert config["features"] == ["a", "b"] and config["label"] == "label" and config["bidirectional"] is True
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("model", "majority"):
        assert set(metrics["test"][name]) == set(METRICS)
    assert metrics["classes"] == ["down", "flat", "up"] and np.array(metrics["confusion"]).sum() == 6
    assert "majority class" in result.stdout and "epoch 3/3" in result.stderr


def test_val_predict_export(trained):
    folder, data, _ = trained
    run = folder / "runs" / "classify" / "train"
    val = grukit("classify", "val", f"model={run}", cwd=folder)
    assert val.returncode == 0, val.stderr
    first = json.loads((run / "metrics.json").read_text())["test"]
    again = json.loads((folder / "runs" / "classify" / "val" / "metrics.json").read_text())["test"]
    assert again["model"]["accuracy"] == pytest.approx(first["model"]["accuracy"])
    unlabelled = folder / "new.csv"
    rows = data.read_text().splitlines()
    unlabelled.write_text("\n".join(r.rsplit(",", 1)[0] + "," for r in rows[1:20]).join([rows[0] + "\n", "\n"]))
    predict = grukit("classify", "predict", f"model={run}", f"source={unlabelled}", cwd=folder)
    assert predict.returncode == 0, predict.stderr
    with open(folder / "runs" / "classify" / "predict" / "predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert predictions and set(predictions[0]) == {"id", "predicted", "probability"}
    assert {p["predicted"] for p in predictions} <= {"up", "down", "flat"}
    export = grukit("classify", "export", f"model={run}", cwd=folder)
    assert export.returncode == 0, export.stderr
    assert (run / "weights" / "best.torchscript.pt").is_file()
    assert float(export.stdout.rsplit("max abs diff ", 1)[1]) < 1e-4


def test_labels_unseen_at_predict_time(trained):
    folder, _, _ = trained
    other = write_sequences(folder / "other.csv", per_class=2, labels=("up", "wobble"))
    result = grukit("classify", "predict", f"model={folder / 'runs/classify/train'}", f"source={other}", cwd=folder)
    assert result.returncode == 2
    assert "label 'wobble' was not seen in training" in result.stderr and "Traceback" not in result.stderr
