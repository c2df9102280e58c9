"""Many series in one file (``series=COLUMN``, long format): one model, metrics pooled and per series, one
forecast per series, and errors that name the series."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from grukit.cli import main
from grukit.errors import DataError
from grukit.tasks.forecast.data import load_frames
from grukit.tasks.forecast.metrics import METRICS
from tests.workflow.forecast_files import small_args

# store -> (days observed, first hour, level): different lengths, starts and scales
STORES = {"north": (12, 0, 10.0), "south": (10, 5, 200.0), "east": (9, 30, 3.0)}
FUTURE = 24  # rows per store after its last load value, with temp filled


def write_stores_csv(path: Path, stores: dict = STORES, future: int = FUTURE, skip: tuple[str, int] | None = None):
    """Hourly load of several stores stacked in one CSV (store,time,load,temp), rows sorted by time so that the
    stores interleave; ``skip=(store, hour)`` leaves that row out (a gap)."""
    rng = np.random.default_rng(0)
    rows = []
    for store, (days, start, level) in stores.items():
        hours = start + np.arange(days * 24 + future)
        temp = 20 + 5 * np.sin(2 * np.pi * hours / 24 - 1) + rng.normal(0, 1, len(hours))
        load = level * (1 + 0.3 * np.sin(2 * np.pi * hours / 24) + 0.01 * temp + rng.normal(0, 0.02, len(hours)))
        for i, hour in enumerate(hours):
            if skip == (store, i):
                continue
            value = f"{load[i]:.5g}" if i < days * 24 else ""
            rows.append((int(hour), store, value, f"{temp[i]:.3f}"))
    rows.sort(key=lambda row: row[0])
    base = np.datetime64("2024-03-01T00:00")
    lines = ["store,time,load,temp"] + [f"{s},{str(base + np.timedelta64(h, 'h'))[:16]},{v},{t}" for h, s, v, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def args(path: Path, **changes: object) -> list[str]:
    return ["forecast", "train", f"data={path}", "series=store", "time=time", *small_args(**changes)]


def test_frames_split_by_series(tmp_path):
    frames = load_frames(str(write_stores_csv(tmp_path / "s.csv")), "time", ["load"], ["temp"], [], "store")
    assert [f.series_id for f in frames] == ["north", "south", "east"]  # order of first appearance
    assert [f.n_observed for f in frames] == [12 * 24, 10 * 24, 9 * 24]
    assert [len(f.times) for f in frames] == [12 * 24 + FUTURE, 10 * 24 + FUTURE, 9 * 24 + FUTURE]
    assert str(frames[1].times[0]) == "2024-03-01T05:00:00" and frames[1].step == 3600
    assert frames[1].targets[0, 0] > 100 > frames[0].targets[0, 0]  # south's own rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    path = write_stores_csv(folder / "stores.csv")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.setenv("GRUKIT_BACKEND", "reference")
    try:
        assert main(args(path)) == 0
        assert main(["forecast", "predict", "model=runs/forecast/train", "verbose=false"]) == 0
    finally:
        mp.undo()
    return folder


def test_one_model_metrics_pooled_and_per_series(trained):
    run = trained / "runs" / "forecast" / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "config.json").read_text())["series"] == "store"
    assert metrics["series_column"] == "store" and list(metrics["series"]) == ["north", "south", "east"]
    for split in ("test", "backtest"):
        for name in ("model", "naive", "seasonal_naive"):
            per_series = [metrics["series"][s][split][name] for s in metrics["series"]]
            assert set(per_series[0]) == set(METRICS)
            for metric in METRICS:  # pooled = mean over the series
                assert metrics[split][name][metric] == pytest.approx(np.mean([m[metric] for m in per_series]))
    # each series is tested on its own last 2 days, scaled by its own level
    assert metrics["series"]["south"]["test_period"] == "2024-03-09T05:00:00 .. 2024-03-11T04:00:00"
    assert metrics["series"]["east"]["test_origins"] == ["2024-03-09T06:00:00", "2024-03-10T06:00:00"]
    scales = [metrics["series"][s]["mase_scale"] for s in ("north", "south", "east")]
    assert scales[1] > 10 * scales[0] > 10 * scales[2]
    # windows from every series: 3 series x (days * 24 - 4 held-out days - 2-day lookback + 1 - horizon + 1)
    assert metrics["train_windows"] == sum(24 * (d - 4 - 2) - 24 + 1 for d, _, _ in STORES.values())


def test_predict_writes_one_forecast_per_series(trained):
    with open(trained / "runs" / "forecast" / "predict" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["series", "time", "target", "q0.1", "q0.5", "q0.9"]
    assert [r["series"] for r in rows] == [s for s in STORES for _ in range(24)]
    first = {s: next(r["time"] for r in rows if r["series"] == s) for s in STORES}
    assert first == {"north": "2024-03-13T00:00:00", "south": "2024-03-11T05:00:00", "east": "2024-03-11T06:00:00"}
    level = {s: np.mean([float(r["q0.5"]) for r in rows if r["series"] == s]) for s in STORES}
    assert level["south"] > 100 > level["north"] > 5 > level["east"] > 1  # per-series scale is kept


@pytest.mark.parametrize(
    ("changes", "skip", "message"),
    [
        ({"series": "stor"}, None, "stores.csv has no series id column 'stor' (did you mean 'store'?)"),
        (
            {"lookback": 120},
            None,
            "stores.csv series 'east': 216 observed rows are too few for lookback 120 + horizon 24 and 2 validation "
            "+ 2 test windows (240 rows needed, one training window)",
        ),
        (
            {},
            ("south", 7),
            "stores.csv line 23, column 'time': time 2024-03-01T13:00 follows 2024-03-01T11:00, a step of 2 hours",
        ),
        ({"target": "store"}, None, "column 'store' is both series and target"),
    ],
)
def test_bad_series_input(tmp_path, monkeypatch, capsys, changes, skip, message):
    path = write_stores_csv(tmp_path / "stores.csv", skip=skip)
    monkeypatch.chdir(tmp_path)
    cli = args(path)
    for key, value in changes.items():
        cli = [a for a in cli if not a.startswith(f"{key}=")] + [f"{key}={value}"]
    assert main(cli) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_empty_id_and_mixed_steps_name_the_row_and_series(tmp_path):
    path = write_stores_csv(tmp_path / "s.csv")
    lines = path.read_text().splitlines()
    lines[3] = "," + lines[3].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"s.csv line 4, column 'store': empty series id; give every row its series"):
        load_frames(str(path), "time", ["load"], ["temp"], [], "store")
    path.write_text("store,time,load\na,2024-01-01,1\nb,2024-01-01T00:00,1\na,2024-01-02,2\nb,2024-01-01T12:00,2\n")
    with pytest.raises(DataError, match=r"s.csv series 'b' steps by 12 hours where series 'a' steps by 1 day"):
        load_frames(str(path), "time", ["load"], [], [], "store")
