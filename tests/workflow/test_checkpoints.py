"""Checkpoints and run folders: atomic writes, round trips, clear errors, never overwriting a run."""

from __future__ import annotations

import os

import pytest
import torch

from grukit.errors import ConfigError, GrukitError
from grukit.fileio import write_atomic
from grukit.workflow.checkpoints import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from grukit.workflow.runs import find_resume_dir, new_run_dir


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    path.write_bytes(b"old complete content")

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new content")
    assert path.read_bytes() == b"old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temporary file left behind
    monkeypatch.undo()
    write_atomic(path, b"new content")
    assert path.read_bytes() == b"new content"


def test_checkpoint_round_trip_with_optimizer_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net.state_dict(), optimizer_tensors(optimizer), {"epoch": 3, "config": {"hidden": 8}})
    model, optim, meta = load_checkpoint(path)
    assert meta["epoch"] == 3 and meta["config"] == {"hidden": 8}
    torch.testing.assert_close(model["weight"], net.weight.detach())
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    load_optimizer_tensors(fresh, optim)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(GrukitError, match=r"checkpoint .*nope\.safetensors' not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(GrukitError, match=r"corrupt\.safetensors' is not a grukit checkpoint"):
        load_checkpoint(corrupt)


def test_run_folders_are_never_reused(tmp_path):
    project = str(tmp_path / "runs")
    first, second, third = (new_run_dir(project, "forecast", "exp") for _ in range(3))
    assert [p.name for p in (first, second, third)] == ["exp", "exp2", "exp3"]
    assert all((p / "weights").is_dir() for p in (first, second, third))
    with pytest.raises(ConfigError, match="no run with a last checkpoint"):
        find_resume_dir(project, "forecast", "auto")
