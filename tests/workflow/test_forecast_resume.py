"""Resume after an interruption continues exactly where the run stopped."""

from __future__ import annotations

import json

import pytest
import torch

import grukit
from grukit.errors import ConfigError
from grukit.workflow.checkpoints import load_checkpoint
from tests.workflow.forecast_files import SMALL, write_hourly_csv
from tests.workflow.forecast_files import grukit as run_grukit


class Interrupt(Exception):
    pass


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")


def settings(tmp_path, **changes):
    return {**SMALL, "epochs": 3, "verbose": False, "project": str(tmp_path / "runs"), **changes}


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    data = str(write_hourly_csv(tmp_path / "hourly.csv", days=20))
    full = grukit.Model("forecast", **settings(tmp_path, name="full"))
    full_report = full.train(data=data)

    broken = grukit.Model("forecast", **settings(tmp_path, name="broken"))

    def stop(epoch):
        if epoch == 2:
            raise Interrupt

    broken._on_epoch_end = stop
    with pytest.raises(Interrupt):
        broken.train(data=data)
    _, _, meta = load_checkpoint(tmp_path / "runs" / "forecast" / "broken" / "weights" / "last.safetensors")
    assert meta["epoch"] == 2 and len(meta["history"]) == 2

    resumed = grukit.Model("forecast", **settings(tmp_path))
    report = resumed.train(resume=True, name="broken")
    assert resumed.run_dir == tmp_path / "runs" / "forecast" / "broken"
    for key, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0)
    assert report["test"]["model"] == full_report["test"]["model"]
    history = (resumed.run_dir / "results.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs
    assert json.loads((resumed.run_dir / "config.json").read_text())["epochs"] == 3


def test_resume_refuses_changed_settings(tmp_path):
    data = str(write_hourly_csv(tmp_path / "hourly.csv", days=20))
    grukit.Model("forecast", **settings(tmp_path, epochs=1)).train(data=data)
    with pytest.raises(ConfigError, match=r"resume continues .*train with its own settings; hidden=16 differs"):
        grukit.Model("forecast", **settings(tmp_path)).train(resume=True, hidden=16)


def test_resume_from_the_command_line_trains_more_epochs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_hourly_csv(tmp_path / "hourly.csv", days=20)
    grukit.Model("forecast", **settings(tmp_path, epochs=1, project="runs", verbose=True)).train(data=str(data))
    again = run_grukit("forecast", "train", "resume=True", "epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming runs/forecast/train after epoch 1 of 2" in again.stderr and "epoch 2/2" in again.stderr
    assert not (tmp_path / "runs" / "forecast" / "train2").exists()
    _, _, meta = load_checkpoint(tmp_path / "runs" / "forecast" / "train" / "weights" / "last.safetensors")
    assert meta["epoch"] == 2
