"""seq2seq with every encoder architecture: ``grukit seq2seq compare`` and ``grukit seq2seq benchmark`` end to end
(the CLI's ``main``, in process) on a tiny slice of the bundled dates; each compared run reloads with the same test
metrics; gru keeps its checkpoint layout; exports, and the sharding of time-major batches for devices>1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import grukit
from grukit.backends import dispatch
from grukit.errors import ConfigError
from grukit.tasks.encoders import ARCHITECTURES
from grukit.tasks.seq2seq.model import Seq2Seq
from grukit.tasks.seq2seq.task import Seq2SeqTask
from grukit.workflow.distributed import Group
from tests.workflow.test_compare_benchmark import run_cli
from tests.workflow.test_seq2seq_end_to_end import reference_backend, write_dates  # noqa: F401 (autouse fixture)

TINY = ["epochs=1", "hidden=8", "embed=4", "batch=32", "plots=false"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """``grukit seq2seq compare`` of every architecture on 120 date pairs: (its compare folder, stdout)."""
    folder = tmp_path_factory.mktemp("seq2seq_compare")
    data = write_dates(folder / "dates.csv", rows=120)
    status, out, err = run_cli(folder, "seq2seq", "compare", f"data={data}", *TINY)
    assert status == 0, err
    return folder / "runs" / "seq2seq" / "compare", out


def test_compare_trains_every_encoder_and_prints_one_table(compared):
    folder, out = compared
    summary = json.loads((folder / "compare.json").read_text())
    assert list(summary["models"]) == list(ARCHITECTURES)
    assert summary["metrics"] == ["exact_match", "cer"] and list(summary["baselines"]) == ["copy", "most_frequent"]
    assert summary["latency_batch"] == 12  # the 12 test sources, decoded greedily
    parameters = {arch: row["parameters"] for arch, row in summary["models"].items()}
    assert len(set(parameters.values())) == 4  # four different encoders
    for row in summary["models"].values():
        assert row["latency_ms"] > 0 and 0 <= row["test"]["exact_match"] <= 1 and row["test"]["cer"] >= 0
    assert "the source encoder only; every one decodes with the same attention GRU decoder" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if " params " in line)
    assert "exact_match" in lines[start] and "ms/batchexact" not in lines[start]
    assert [line.split()[0] for line in lines[start + 1 : start + 5]] == ["GRU", "minGRU", "LSTM", "Transformer"]


def test_each_compared_model_reloads_with_the_same_test_metrics(compared):
    folder, _ = compared
    summary = json.loads((folder / "compare.json").read_text())
    for arch in ARCHITECTURES:
        model = grukit.Model.load(folder / arch)
        assert model.cfg["model"] == arch and model.net.arch == arch
        again = model.val(project=str(folder / "val"), verbose=False)
        assert again["test"]["model"] == pytest.approx(summary["models"][arch]["test"], rel=1e-6)
        assert again["architecture"] == arch


@pytest.mark.parametrize("arch", ["gru", "mingru"])
def test_benchmark_times_greedy_decoding_on_every_runtime_or_says_why_not(compared, arch, tmp_path):
    folder, _ = compared
    status, out, err = run_cli(tmp_path, "seq2seq", "benchmark", f"model={folder / arch}", "project=out", "name=b")
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "seq2seq" / "b" / "benchmark.json").read_text())
    rows = {row["name"]: row for row in report["results"]}
    assert set(rows) == {*dispatch.names(), "onnxruntime"} and report["batch"] == 12
    assert rows["reference"]["median_ms"] > 0 and rows["reference"]["max_abs_diff"] == 0.0
    for row in rows.values():  # every runtime either ran (the same output ids) or says why not
        assert (row["median_ms"] is not None and row["max_abs_diff"] == 0.0) != bool(row["reason"]), row
    if arch == "gru":
        assert rows["onnxruntime"]["median_ms"] > 0
    else:
        assert "a model=mingru seq2seq has no ONNX graph" in rows["onnxruntime"]["reason"]
    assert "speed vs reference" in out


def test_gru_keeps_its_checkpoint_layout():
    net = Seq2Seq(10, 12, hidden=4, embed=3, layers=1)
    shapes = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    gru = {"weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4), "bias_ih_l0": (12,), "bias_hh_l0": (12,)}
    expected = {
        "source_embed.weight": (10, 3),
        "target_embed.weight": (12, 3),
        **{f"encoder.{k}": v for k, v in gru.items()},
        **{f"encoder.{k}_reverse": v for k, v in gru.items()},
        "bridge.weight": (4, 8),
        "bridge.bias": (4,),
        **{f"decoder.{k}": v for k, v in gru.items()},
        "attend.weight": (4, 8),
        "combine.weight": (4, 12),
        "combine.bias": (4,),
        "out.weight": (12, 4),
        "out.bias": (12,),
    }
    assert shapes == expected


def tiny_task(folder: Path) -> Seq2SeqTask:
    """The seq2seq task of 40 date pairs (hidden 4, embed 3), as training prepares it."""
    data = write_dates(folder / "dates.csv", rows=40)
    cfg = grukit.Model("seq2seq", data=str(data), hidden=4, embed=3).cfg
    return Seq2SeqTask.prepare({**cfg, "mode": "train"})


@pytest.mark.parametrize("arch", ["mingru", "lstm", "transformer"])  # gru: test_seq2seq_end_to_end
def test_exports_decode_like_pytorch_or_say_which_format_works(arch, tmp_path):
    task = tiny_task(tmp_path)
    net = Seq2SeqTask.build_network({**task.cfg, "model": arch}, task.meta())
    for fmt in ("torchscript", "onnx"):
        if fmt == "onnx" and arch == "mingru":
            with pytest.raises(ConfigError, match=r"model=mingru seq2seq has no ONNX graph.*use format=torchscript"):
                task.export(net, task.example_inputs(), tmp_path / "model.onnx", fmt)
            continue
        path, diff = task.export(net, task.example_inputs(), tmp_path / f"model.{fmt}", fmt)
        assert path.is_file() and diff == 0.0  # the same output ids (the batch and a batch of one)


def test_time_major_batches_shard_by_column_for_two_devices(tmp_path):
    task = tiny_task(tmp_path)
    batch = next(b for b in task.train_batches(np.random.default_rng(0), 7) if len(b["lengths"]) == 7)
    parts = [Group(torch.device("cpu"), rank, 2).shard(batch, task.batch_axes) for rank in (0, 1)]
    for key, axis in {"source": 1, "inputs": 1, "outputs": 1, "lengths": 0}.items():
        assert torch.equal(torch.cat([p[key] for p, _ in parts], dim=axis), batch[key]), key
    assert [weight for _, weight in parts] == [6 / 7, 8 / 7]  # 3 and 4 of the 7 pairs
    net = Seq2SeqTask.build_network(task.cfg, task.meta())
    for part, _ in parts:  # each shard is a batch the network trains on
        assert torch.isfinite(task.loss(net, part, torch.device("cpu")))
