"""Faults never lose work: damaged checkpoints are refused, a run killed with SIGKILL at any moment resumes to
the same weights as an uninterrupted run, and non-finite losses are skipped, counted and, when they persist,
stop the run with its last good checkpoint intact."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import grukit
from grukit.errors import GrukitError
from grukit.tasks.forecast.task import ForecastTask
from grukit.workflow.checkpoints import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRUKIT_BACKEND": "reference", "PYTHONPATH": str(ROOT)}
# airline (144 monthly values), a tiny GRU: about 0.1 s per epoch
TINY = {"data": "airline", "hidden": 4, "batch": 8, "patience": 0, "plots": False, "verbose": False}


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "weights" / "best.safetensors")[0]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


# ------------------------------------------------------------ damaged checkpoints


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "last.safetensors"
    net = torch.nn.GRU(3, 4)
    save_checkpoint(path, net.state_dict(), {"0.step": torch.tensor(3.0)}, {"epoch": 2, "config": {"hidden": 4}})
    return path


def test_a_corrupted_byte_is_caught_by_the_checksum(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes: the file still parses
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(GrukitError, match=r"last\.safetensors' is damaged \(checksum mismatch\).*other checkpoint"):
        load_checkpoint(checkpoint)


def test_a_truncated_checkpoint_is_reported(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) - 7])
    with pytest.raises(GrukitError, match=r"last\.safetensors' is not a grukit checkpoint, or it is truncated"):
        load_checkpoint(checkpoint)


def test_a_changed_document_is_caught_by_the_checksum(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data.replace(b'\\"epoch\\": 2', b'\\"epoch\\": 7'))
    assert checkpoint.read_bytes() != data
    with pytest.raises(GrukitError, match=r"damaged \(checksum mismatch\)"):
        load_checkpoint(checkpoint)


# ------------------------------------------------------------ kill -9, then resume


def reference_run(tmp_path: Path, epochs: int) -> tuple[dict[str, torch.Tensor], float]:
    """The uninterrupted run's weights and its training time."""
    report = grukit.Model("forecast", **TINY, epochs=epochs, project=str(tmp_path / "runs"), name="ref").train()
    return weights_of(tmp_path / "runs" / "forecast" / "ref"), report["train_seconds"]


def start_cli(tmp_path: Path, epochs: int, prelude: str = "") -> subprocess.Popen:
    """``grukit forecast train`` (run name "killed") in a subprocess, after ``prelude`` (Python code)."""
    args = ["forecast", "train", *(f"{k}={v}" for k, v in TINY.items())]
    args += [f"epochs={epochs}", f"project={tmp_path / 'runs'}", "name=killed"]
    code = f"{prelude}\nimport sys\nfrom grukit.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=tmp_path, stderr=subprocess.PIPE)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def resume(tmp_path: Path) -> dict[str, torch.Tensor]:
    model = grukit.Model("forecast", project=str(tmp_path / "runs"), verbose=False)
    model.train(resume=True, name="killed")
    return weights_of(tmp_path / "runs" / "forecast" / "killed")


# Run in the subprocess: the second time `last` is saved, leave half its temporary file and hang before the
# rename, so the test kills the run in the middle of writing a checkpoint.
HANG_IN_SECOND_CHECKPOINT = """
import os, time
from pathlib import Path
rename, saves = os.replace, []
def replace(src, dst):
    if Path(dst).name == "last.safetensors":
        saves.append(dst)
        if len(saves) == 2:
            os.truncate(src, Path(src).stat().st_size // 2)
            Path(dst).with_name("hanging").touch()
            time.sleep(600)
    rename(src, dst)
os.replace = replace
"""


def test_kill_during_a_checkpoint_write_then_resume_gives_the_same_weights(tmp_path):
    want, _ = reference_run(tmp_path, epochs=4)
    proc = start_cli(tmp_path, epochs=4, prelude=HANG_IN_SECOND_CHECKPOINT)
    weights = tmp_path / "runs" / "forecast" / "killed" / "weights"
    wait_for(weights / "hanging", proc)
    kill(proc)
    assert [p.name for p in weights.glob(".last.safetensors.*.tmp")], "the half-written checkpoint is there"
    assert load_checkpoint(weights / "last.safetensors")[2]["epoch"] == 1  # the previous one, intact
    assert_same_weights(resume(tmp_path), want)
    assert not list(weights.glob(".*.tmp"))  # the resumed run cleaned up the half-written file


def test_kill_at_a_random_moment_then_resume_gives_the_same_weights(tmp_path):
    epochs = 15
    want, train_seconds = reference_run(tmp_path, epochs)
    proc = start_cli(tmp_path, epochs)
    wait_for(tmp_path / "runs" / "forecast" / "killed" / "weights" / "last.safetensors", proc)
    delay = random.uniform(0, train_seconds)  # anywhere in training, checkpoint writes and the final report
    time.sleep(delay)
    if proc.poll() is not None:
        pytest.fail(f"the run finished before the kill after {delay:.2f} s; the test needs a longer run")
    kill(proc)
    _, _, meta = load_checkpoint(tmp_path / "runs" / "forecast" / "killed" / "weights" / "last.safetensors")
    assert 1 <= meta["epoch"] <= epochs, f"killed {delay:.2f} s after the first checkpoint"
    assert_same_weights(resume(tmp_path), want)


# ------------------------------------------------------------ non-finite loss


def nan_loss_at(monkeypatch, bad_step) -> list[int]:
    """Make ForecastTask.loss non-finite at the optimiser steps (1-based) where ``bad_step(step)`` is true."""
    calls: list[int] = []
    loss = ForecastTask.loss

    def patched(self, net, batch, device):
        calls.append(len(calls) + 1)
        value = loss(self, net, batch, device)
        return value * math.nan if bad_step(len(calls)) else value

    monkeypatch.setattr(ForecastTask, "loss", patched)
    return calls


def test_a_non_finite_loss_is_skipped_and_reported(tmp_path, monkeypatch, capsys):
    nan_loss_at(monkeypatch, lambda step: step in (2, 7))
    model = grukit.Model("forecast", **{**TINY, "verbose": True}, epochs=2, project=str(tmp_path))
    report = model.train()
    assert report["skipped_steps"] == 2
    assert json.loads((model.run_dir / "metrics.json").read_text())["skipped_steps"] == 2
    rows = (model.run_dir / "results.csv").read_text().splitlines()
    skipped = [int(row.split(",")[rows[0].split(",").index("skipped")]) for row in rows[1:]]
    assert skipped == [1, 1]  # 5 steps per epoch
    assert "skipped 1 non-finite step" in capsys.readouterr().err
    assert all(torch.isfinite(v).all() for v in model.net.state_dict().values())


def test_repeated_non_finite_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, lambda step: step > 5)  # epoch 1 (5 steps) is fine, then every step fails
    model = grukit.Model("forecast", **TINY, epochs=3, max_nonfinite=3, project=str(tmp_path))
    run = tmp_path / "forecast" / "train"
    with pytest.raises(GrukitError, match=r"stopped in epoch 2: 3 steps in a row had a non-finite loss.*"
                       r"last good checkpoint .*last\.safetensors \(epoch 1\) is intact"):  # fmt: skip
        model.train()
    tensors, _, meta = load_checkpoint(run / "weights" / "last.safetensors")
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in tensors.values())
    assert not (run / "metrics.json").exists()
