"""``stream=true``: a file read chunk by chunk gives the numbers of a whole-file load (scaling, MASE scales,
held-out windows, the same training windows), checks rows across chunk boundaries, and trains end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch

import grukit.tasks.forecast.stream as stream
from grukit.cli import main
from grukit.errors import ConfigError, DataError
from grukit.tasks.forecast.task import ForecastTask
from grukit.workflow.config import resolve
from tests.workflow.forecast_files import SMALL, small_args, write_hourly_csv

WINDOWS = {k: v for k, v in SMALL.items() if k in ("lookback", "test_windows", "val_windows", "target", "known")}


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_ROWS", 100)  # 30 days of hourly rows: 8 chunks


def tasks(path, **changes) -> tuple[ForecastTask, ForecastTask]:
    cfg = {"data": str(path), **WINDOWS, **changes}
    return ForecastTask.prepare(resolve(cfg)), ForecastTask.prepare(resolve({**cfg, "stream": True}))


def windows(task: ForecastTask, batch: int) -> tuple[list[int], list[tuple]]:
    """The sizes of one epoch's batches and its windows (target rows of the batches, sorted)."""
    batches = list(task.train_batches(np.random.default_rng(0), batch))
    rows = torch.cat([b["target"] for b in batches]).numpy().round(6)
    return [len(b["target"]) for b in batches], sorted(map(tuple, rows.tolist()))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_streamed_file_gives_the_whole_file_numbers(tmp_path, small_chunks, suffix):
    path = write_hourly_csv(tmp_path / "h.csv", days=30, future_hours=24)
    if suffix == "parquet":
        pq.write_table(pa_csv.read_csv(path), tmp_path / "h.parquet", row_group_size=70)
        path = tmp_path / "h.parquet"
    whole, streamed = tasks(path)
    assert streamed.stream is not None and len(streamed.stream.chunks) == 8
    assert len(streamed.frame.times) < len(whole.frame.times)  # it holds only the tail
    assert streamed.scaling.known_mean == pytest.approx(whole.scaling.known_mean, rel=1e-12)
    assert streamed.scaling.known_std == pytest.approx(whole.scaling.known_std, rel=1e-12)
    assert streamed._scale(0) == pytest.approx(whole._scale(0), rel=1e-12)
    assert streamed.cfg["lookback"] == whole.cfg["lookback"] and streamed.cfg["test_windows"] == 2
    times = [[t.frame.time_text(int(o)) for o in t.layout.test_origins] for t in (whole, streamed)]
    assert times[0] == times[1] == ["2024-01-29T00:00:00", "2024-01-30T00:00:00"]
    base = whole.baseline_metrics("test"), streamed.baseline_metrics("test")
    for kind in ("naive", "seasonal_naive"):
        for metric in ("mae", "rmse", "mase", "smape"):
            assert base[1][kind][metric] == pytest.approx(base[0][kind][metric], rel=1e-12)
    # the same training windows, every batch full but the last
    assert streamed.train_windows == whole.train_windows == 720 - 96 - 24 - 48 + 1
    (sizes, got), (_, expected) = windows(streamed, 64), windows(whole, 64)
    assert got == expected and sizes == [64] * 8 + [553 - 8 * 64]


def test_sample_draws_a_share_of_the_windows(tmp_path, small_chunks):
    path = write_hourly_csv(tmp_path / "h.csv", days=30)
    whole, streamed = tasks(path, sample=0.25)
    assert whole.train_windows == 139  # ceil(553 / 4)
    assert 139 <= streamed.train_windows <= 139 + 8  # rounded up in each of the 8 chunks
    for task in (whole, streamed):
        sizes, rows = windows(task, 32)
        assert sum(sizes) == task.train_windows == len(set(rows)) and task.steps_per_epoch(32) == len(sizes)


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (302, None, "h.csv line 302, column 'time': time 2024-01-13T13:00 follows 2024-01-13T11:00, a step of 2 hours"),
        (502, "2024-01-21T20:00,oops,20.0,x", "h.csv line 502, column 'load': 'oops' is not a number"),
        (652, "2024-01-28T02:00,,20.0,x", "h.csv line 652, column 'load': missing value (empty or NaN); fill it"),
    ],
)
def test_bad_rows_in_later_chunks_are_named(tmp_path, small_chunks, line, text, message):
    path = write_hourly_csv(tmp_path / "h.csv", days=30)
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line - 1]  # hour 300 goes: a gap between rows 299 and 300, the first row of the 4th chunk
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        ForecastTask.prepare(resolve({"data": str(path), **WINDOWS, "stream": True}))
    assert message in str(err.value)


def test_stream_needs_one_series_in_a_file(tmp_path):
    with pytest.raises(ConfigError, match="stream=true reads a CSV or Parquet file chunk by chunk"):
        ForecastTask.prepare(resolve({"stream": True}))
    path = write_hourly_csv(tmp_path / "h.csv", days=10)
    with pytest.raises(ConfigError, match="stream=true reads one series; drop series= or stream=true"):
        ForecastTask.prepare(resolve({"data": str(path), **WINDOWS, "stream": True, "series": "note"}))


def test_streamed_run_end_to_end(tmp_path, small_chunks, monkeypatch, capsys):
    path = write_hourly_csv(tmp_path / "h.csv", days=30, future_hours=24)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    assert main(["forecast", "train", f"data={path}", "stream=true", *small_args(epochs=1)]) == 0
    assert "553 training windows per epoch, read in chunks of 100 rows" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "runs" / "forecast" / "train" / "metrics.json").read_text())
    assert metrics["train_windows"] == 553 and np.isfinite(metrics["test"]["model"]["mase"])
    assert main(["forecast", "predict", "model=runs/forecast/train", "verbose=false"]) == 0
    rows = (tmp_path / "runs" / "forecast" / "predict" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 25 and rows[1].startswith("2024-01-31T00:00:00,load,")


def test_running_out_of_memory_on_parquet_points_to_stream(tmp_path, monkeypatch):
    path = tmp_path / "h.parquet"
    pq.write_table(pa_csv.read_csv(write_hourly_csv(tmp_path / "h.csv", days=2)), path)

    def no_memory(*args, **kwargs):
        raise MemoryError("malloc of size 800000 failed")

    monkeypatch.setattr(pq, "read_table", no_memory)
    with pytest.raises(DataError) as err:
        ForecastTask.prepare(resolve({"data": str(path), "target": "load"}))
    assert str(err.value) == (
        "h.parquet: out of memory reading it (malloc of size 800000 failed); for files bigger than memory use "
        "stream=true"
    )
