"""Distributed training: 2 CPU worker processes (gloo) take the same steps as one process with the same global
batch, and under torchrun a worker killed mid-run is restarted and the job completes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import grukit
from grukit.errors import ConfigError
from grukit.workflow.checkpoints import load_checkpoint
from grukit.workflow.distributed import Group
from tests.workflow.test_faults import ENV, TINY, reference_backend  # noqa: F401 (an autouse fixture)
from tests.workflow.test_faults import weights_of as best_weights

# TINY on airline: 37 training windows, so batch 8 gives 5 steps an epoch, the last of 5 windows (2 and 3 per worker)


def assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_shards_cover_the_global_batch_once_with_weights_that_restore_its_mean():
    batch = {"past": torch.arange(2 * 5 * 3.0).reshape(2, 5, 3), "target": torch.arange(5.0)}  # (T, B, F), (B,)
    parts = [Group(torch.device("cpu"), rank, 2).shard(batch) for rank in (0, 1)]
    assert [p["target"].tolist() for p, _ in parts] == [[0.0, 1.0], [2.0, 3.0, 4.0]]
    assert torch.equal(torch.cat([p["past"] for p, _ in parts], dim=1), batch["past"])
    # DDP averages the ranks' weighted means: that must be the mean over the global batch
    averaged = sum(weight * p["target"].mean() for p, weight in parts) / 2
    torch.testing.assert_close(averaged, batch["target"].mean())
    single = {"target": torch.tensor([1.0])}
    assert Group(torch.device("cpu"), 0, 2).shard(single) == (single, 0.0)  # no row for rank 0: weight 0
    tokens = {"source": torch.arange(12).reshape(3, 4), "lengths": torch.arange(4)}  # (T, B) time-major ids
    part, _ = Group(torch.device("cpu"), 1, 2).shard(tokens, {"source": 1})  # the task's batch_axes
    assert torch.equal(part["source"], tokens["source"][:, 2:]) and part["lengths"].tolist() == [2, 3]
    with pytest.raises(ConfigError, match="disagree on the batch size"):
        Group(torch.device("cpu"), 0, 2).shard({"a": torch.zeros(4), "b": torch.zeros(3)})


def test_two_processes_take_the_same_steps_as_one(tmp_path):
    project = str(tmp_path / "runs")
    one = grukit.Model("forecast", **TINY, epochs=2, project=project, name="one")
    one.train()
    two = grukit.Model("forecast", **TINY, epochs=2, project=project, name="two")
    report = two.train(devices=2)
    assert two.run_dir == tmp_path / "runs" / "forecast" / "two" and report["epochs_run"] == 2
    assert_close_weights(best_weights(two.run_dir), best_weights(one.run_dir))
    assert_close_weights(two.net.state_dict(), one.net.state_dict())
    assert sorted(p.name for p in two.run_dir.iterdir()) == ["config.json", "metrics.json", "results.csv", "weights"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def worker_of_rank(agent: int, rank: int) -> int | None:
    for pid in descendants(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"GRUKIT_BACKEND=reference" in environ:
            return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker to kill in /proc")
def test_torchrun_restarts_a_killed_worker_and_the_job_completes_from_its_checkpoint(tmp_path):
    # one restart must be enough: the restarted group must not read the killed attempt's addresses from the store
    epochs = 8
    args = [f"{k}={v}" for k, v in {**TINY, "verbose": True}.items()] + [f"epochs={epochs}", "name=job"]
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
         "1", "-m", "grukit", "forecast", "train", *args],
        env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    last = tmp_path / "runs" / "forecast" / "job" / "weights" / "last.safetensors"
    deadline = time.monotonic() + 150
    while not last.exists():
        assert agent.poll() is None, agent.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim = worker_of_rank(agent.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    output, _ = agent.communicate(timeout=240)
    assert agent.returncode == 0, output[-3000:]
    assert f"resuming {Path('runs/forecast/job')} after epoch" in output, output[-3000:]
    run = tmp_path / "runs" / "forecast" / "job"
    assert load_checkpoint(run / "weights" / "last.safetensors")[2]["epoch"] == epochs
    assert (run / "metrics.json").is_file() and not (tmp_path / "runs" / "forecast" / "job2").exists()
    single = grukit.Model("forecast", **TINY, epochs=epochs, project=str(tmp_path / "single")).train()
    assert single["epochs_run"] == epochs
    assert_close_weights(best_weights(run), best_weights(tmp_path / "single" / "forecast" / "train"))
