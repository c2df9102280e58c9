"""``grukit seq2seq train | val | predict | export`` end to end through ``python -m grukit`` on a slice of the
bundled dates, and resume after an interruption."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
import torch

import grukit
from grukit.data import bundled
from grukit.errors import DataError
from grukit.tasks.seq2seq.metrics import METRICS
from grukit.workflow.checkpoints import load_checkpoint
from tests.workflow.forecast_files import grukit as run_grukit

SMALL = ["epochs=2", "hidden=12", "embed=8", "batch=32", "verbose=true"]


def write_dates(path: Path, rows: int = 240, separator: str = ",") -> Path:
    """The first ``rows`` pairs of the bundled dates whose source has at most 12 characters (short sources keep
    the unrolled export graphs small), with the locale column, as a CSV (or a TSV with separator tab)."""
    with gzip.open(Path(bundled.__file__).with_name("dates.csv.gz"), "rt", encoding="utf-8", newline="") as handle:
        header, *table = list(csv.reader(handle))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=separator, lineterminator="\n")
        writer.writerows([header, *[row for row in table if len(row[0]) <= 12][:rows]])
    return path


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    """In-process calls use the pure-PyTorch backend too (as the CLI calls, through ENV)."""
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq2seq")
    data = write_dates(folder / "dates.tsv", separator="\t")
    result = run_grukit("seq2seq", "train", f"data={data}", *SMALL, "plots=true", cwd=folder)
    return folder, data, result


def test_train_writes_the_run_folder(trained):
    folder, _, result = trained
    assert result.returncode == 0, result.stderr
    run = folder / "runs" / "seq2seq" / "train"
    files = {p.relative_to(run).as_posix() for p in run.rglob("*")}
    assert {"config.json", "metrics.json", "results.csv", "weights/best.safetensors", "attention.png"} <= files
    config = json.loads((run / "config.json").read_text())
    assert config["columns"] == ["source", "target"] and config["beam"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("model", "copy", "most_frequent"):
        assert set(metrics["test"][name]) == set(METRICS)
    assert metrics["pairs"] == {"train": 194, "val": 22, "test": 24}
    assert metrics["test"]["copy"]["exact_match"] < 0.2 and metrics["test"]["most_frequent"]["cer"] > 0.2
    assert "copy the source" in result.stdout and "most frequent target" in result.stdout
    assert "epoch 2/2" in result.stderr and "val_cer" in result.stderr


def test_val_with_beam_search(trained):
    folder, _, _ = trained
    run = folder / "runs" / "seq2seq" / "train"
    val = run_grukit("seq2seq", "val", f"model={run}", "beam=3", cwd=folder)
    assert val.returncode == 0, val.stderr
    report = json.loads((folder / "runs" / "seq2seq" / "val" / "metrics.json").read_text())
    first = json.loads((run / "metrics.json").read_text())
    assert report["beam"] == 3 and "beam search (beam 3)" in val.stdout
    assert report["pairs"] == first["pairs"]  # the same test split as in training
    assert report["test"]["copy"] == first["test"]["copy"]


def test_predict_sources_without_targets(trained):
    folder, _, _ = trained
    run = folder / "runs" / "seq2seq" / "train"
    new = folder / "new.csv"
    new.write_text('source\n4 Mar 2015\n"May 3, 2015"\n12.05.99\n', encoding="utf-8")
    predict = run_grukit("seq2seq", "predict", f"model={run}", f"source={new}", cwd=folder)
    assert predict.returncode == 0, predict.stderr
    with open(folder / "runs" / "seq2seq" / "predict" / "predictions.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["source"] for r in rows] == ["4 Mar 2015", "May 3, 2015", "12.05.99"]
    assert set(rows[0]) == {"source", "predicted"}


def test_predict_a_labelled_file_writes_the_targets_too_and_names_unseen_characters(trained):
    folder, data, _ = trained
    model = grukit.Model.load(folder / "runs" / "seq2seq" / "train")
    model.cfg.update(verbose=False, project=str(folder / "runs"))
    rows = model.predict(str(data)).rows()
    assert len(rows) == 240 and set(rows[0]) == {"source", "predicted", "target"}
    assert (rows[0]["source"], rows[0]["target"]) == ("17/05/71", "1971-05-17")  # the file's first pair
    bad = folder / "bad.csv"
    bad.write_text("source\n4 Mar 2015\n4 Mar 2015 ¤\n", encoding="utf-8")
    message = r"bad.csv line 3, column 'source': character '¤' \(U\+00A4\) is not in the model's 48 source characters"
    with pytest.raises(DataError, match=message):
        model.predict(str(bad))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_is_checked_against_pytorch(trained, fmt):
    folder, _, _ = trained
    run = folder / "runs" / "seq2seq" / "train"
    result = run_grukit("seq2seq", "export", f"model={run}", f"format={fmt}", cwd=folder)
    assert result.returncode == 0, result.stderr
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    assert (run / "weights" / f"best{suffix}").is_file()
    assert float(result.stdout.rsplit("max abs diff ", 1)[1]) == 0  # the same output ids
    if fmt == "torchscript":  # the file decodes by itself: ids of the longest-source shape, batch dynamic
        steps = load_checkpoint(run / "weights" / "best.safetensors")[2]["task_meta"]["max_source"]
        module = torch.jit.load(str(run / "weights" / f"best{suffix}"))
        ids = module(torch.full((2, steps), 3, dtype=torch.long), torch.tensor([steps, 5]))
        assert ids.shape[0] == 2 and ids.dtype == torch.long


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    data = str(write_dates(tmp_path / "dates.csv", rows=120))
    settings = {"epochs": 2, "hidden": 8, "embed": 4, "batch": 32, "verbose": False, "plots": False}
    settings["project"] = str(tmp_path / "runs")
    full = grukit.Model("seq2seq", name="full", **settings)
    full.train(data=data)
    broken = grukit.Model("seq2seq", name="broken", **settings)

    def stop(epoch):
        if epoch == 1:
            raise Interrupt

    broken._on_epoch_end = stop
    with pytest.raises(Interrupt):
        broken.train(data=data)
    assert load_checkpoint(tmp_path / "runs" / "seq2seq" / "broken" / "weights" / "last.safetensors")[2]["epoch"] == 1
    resumed = grukit.Model("seq2seq", **settings)
    resumed.train(resume=True, name="broken")
    for key, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0)
