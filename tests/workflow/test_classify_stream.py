"""Classify ``stream=true``: a long-format file read chunk by chunk (sequences crossing chunk boundaries) gives
the classes, scaling, held-out sequences and validation/test metrics of an in-memory load, the same errors,
every training sequence once an epoch, and trains end to end from CSV and Parquet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch

import grukit.tasks.classify.stream as stream
from grukit.cli import main
from grukit.errors import ConfigError, DataError
from grukit.tasks.classify.task import ClassifyTask
from grukit.workflow.config import resolve

CHUNK = 17  # rows a chunk: smaller than most sequences


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_ROWS", CHUNK)


def write_file(folder: Path, suffix: str = "csv", per_class: int = 10, split: bool = True) -> Path:
    """Long-format seq, step, a, b, label[, split]: 3 classes of trends, lengths 5..12, steps shuffled within a
    sequence; split: every 5th sequence test, every 5th (offset 2) val."""
    rng = np.random.default_rng(1)
    path = folder / "seqs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seq", "step", "a", "b", "label", *(["split"] * split)])
        for n in range(3 * per_class):
            label = ("up", "down", "flat")[n % 3]
            part = "test" if n % 5 == 0 else "val" if n % 5 == 2 else "train"
            for step in rng.permutation(int(rng.integers(5, 13))):
                a = {"up": 1, "down": -1, "flat": 0}[label] * step + rng.normal(0, 0.3)
                writer.writerow([f"s{n}", step, f"{a:.4f}", f"{rng.normal(3, 2):.4f}", label, *([part] * split)])
    if suffix == "parquet":
        pq.write_table(pa_csv.read_csv(path), folder / "seqs.parquet", row_group_size=23)
        return folder / "seqs.parquet"
    return path


def prepare(path: Path, **changes) -> ClassifyTask:
    return ClassifyTask.prepare(resolve({"task": "classify", "data": str(path), "hidden": 8, **changes}))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streamed_file_gives_the_in_memory_numbers(tmp_path, suffix):
    path = write_file(tmp_path, suffix)
    whole, streamed = prepare(path), prepare(path, stream=True)
    assert streamed.stream is not None and whole.stream is None
    assert streamed.classes == whole.classes == ["down", "flat", "up"]
    assert streamed.mean == pytest.approx(whole.mean, rel=1e-12) and streamed.std == pytest.approx(whole.std, rel=1e-12)
    assert streamed._sizes() == whole._sizes() == {"train": 18, "val": 6, "test": 6}
    assert streamed.majority_class() == whole.majority_class()
    for part in ("val", "test"):  # the same held-out sequences, rows sorted by step
        ids = [[t.seqs.ids[i] for i in t.parts[part]] for t in (whole, streamed)]
        assert ids[0] == ids[1]
        assert np.array_equal(*(t.seqs.padded(t.parts[part], t.mean, t.std)[0] for t in (whole, streamed)))
    torch.manual_seed(0)
    net = ClassifyTask.build_network(whole.cfg, whole.meta())
    metas = [{k: v for k, v in t.meta().items() if k not in ("mean", "std")} for t in (whole, streamed)]
    assert metas[0] == metas[1]  # what a checkpoint keeps to read new data
    for part in ("val", "test"):
        assert streamed.evaluate(net, part, torch.device("cpu")) == whole.evaluate(net, part, torch.device("cpu"))
    # one epoch: every training sequence once (batches full but the last), shuffled across chunks
    assert streamed.steps_per_epoch(4) == whole.steps_per_epoch(4) == 5
    epochs = [list(t.train_batches(np.random.default_rng(0), 4)) for t in (whole, streamed)]
    assert [len(b["y"]) for b in epochs[1]] == [4, 4, 4, 4, 2]
    ys = [sorted(torch.cat([b["y"] for b in e]).tolist()) for e in epochs]
    lengths = [sorted(torch.cat([b["lengths"] for b in e]).tolist()) for e in epochs]
    sums = [sum(float(b["x"].double().sum()) for b in e) for e in epochs]
    assert ys[0] == ys[1] and lengths[0] == lengths[1] and sums[1] == pytest.approx(sums[0], rel=1e-9)
    again = list(streamed.train_batches(np.random.default_rng(0), 4))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(again, epochs[1], strict=True))  # seeded


def test_hashed_split_without_a_split_column(tmp_path):
    path = write_file(tmp_path, per_class=20, split=False)
    first, again, other = (prepare(path, stream=True, seed=s) for s in (0, 0, 1))
    sizes = first._sizes()
    assert sum(sizes.values()) == 60 and 4 <= sizes["test"] <= 20 and 4 <= sizes["val"] <= 20
    held = [set(t.seqs.ids) for t in (first, again, other)]
    assert held[0] == held[1] != held[2]
    assert not {first.seqs.ids[i] for i in first.parts["val"]} & {first.seqs.ids[i] for i in first.parts["test"]}
    assert first.steps_per_epoch(4) == -(-sizes["train"] // 4)
    half = prepare(path, stream=True, sample=0.5)
    assert half.steps_per_epoch(1) < sizes["train"] and len(list(half.train_batches(np.random.default_rng(0), 1))) == (
        half.steps_per_epoch(1)
    )


def _bad(text: str, tmp_path: Path) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


ROWS = "".join(f"A,{i},{i}.5,1,cat\n" for i in range(12)) + "".join(f"B,{i},{i},2,dog\n" for i in range(12))
GOOD = "seq,step,x,y,label\n" + ROWS


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("3.5", "abc"),
        GOOD.replace("B,10,10,2,dog", "B,10,10,2,cat"),  # a label change past the first chunk
        GOOD.replace("B,11,", "B,3,"),
        GOOD.replace("A,9,9.5", "A,9,"),
        GOOD.replace("A,11,11.5,1,cat", "A,,11.5,1,cat"),
        "seq,step,x,y,label,split\n" + ROWS.replace("cat\n", "cat,train\n").replace("dog\n", "dog,dev\n"),
        "seq,step,x,y,label\n" + ROWS.replace("cat", ""),
        "seq,step,x,y,label\n" + ROWS.replace("dog", "cat"),
    ],
    ids=["not a number", "label changes", "step twice", "missing value", "missing step", "bad split", "no label",
         "one class"],
)
def test_bad_data_gives_the_in_memory_error(tmp_path, text):
    path = _bad(text, tmp_path)
    with pytest.raises(DataError) as whole:
        prepare(path)
    with pytest.raises(DataError) as streamed:
        prepare(path, stream=True)
    assert str(streamed.value) == str(whole.value)


def test_stream_needs_sequences_together_in_a_file(tmp_path):
    path = _bad(GOOD + "A,12,12.5,1,cat\n", tmp_path)
    with pytest.raises(DataError) as err:
        prepare(path, stream=True)
    assert str(err.value) == (
        "d.csv line 26, column 'seq': sequence 'A' continues here after other sequences; stream=true needs the "
        "rows of each sequence together (sort the file by seq)"
    )
    with pytest.raises(ConfigError, match="stream=true reads a CSV or Parquet file chunk by chunk"):
        ClassifyTask.prepare(resolve({"task": "classify", "stream": True}))
    with pytest.raises(ConfigError, match="stream=true reads numeric sequences"):
        prepare(_bad("text,label\nhello there,a\nbye now,b\n", tmp_path), stream=True)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streamed_run_end_to_end(tmp_path, monkeypatch, capsys, suffix):
    path = write_file(tmp_path, suffix)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    args = ["epochs=2", "hidden=8", "batch=8", "plots=false"]
    assert main(["classify", "train", f"data={path}", "stream=true", *args]) == 0
    assert f"18 train (read in chunks of {CHUNK} rows each epoch), 6 validation, 6 test" in capsys.readouterr().err
    run = tmp_path / "runs" / "classify" / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sequences"] == {"train": 18, "val": 6, "test": 6} and metrics["classes"] == ["down", "flat", "up"]
    assert 0 <= metrics["test"]["model"]["accuracy"] <= 1
    assert main(["classify", "val", "model=runs/classify/train", "verbose=false"]) == 0
    again = json.loads((tmp_path / "runs" / "classify" / "val" / "metrics.json").read_text())
    assert again["test"]["model"] == metrics["test"]["model"]
