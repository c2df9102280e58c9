"""The rolling-origin backtest in metrics.json: origins stepping back through the test period, the model (not
retrained) and the baselines under the same metric names; baseline numbers recomputed here from the file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from grukit.cli import main
from grukit.tasks.forecast.metrics import METRICS
from grukit.tasks.forecast.task import ForecastTask
from grukit.workflow.config import resolve
from tests.workflow.forecast_files import small_args, write_hourly_csv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch run on 30 days of hourly data: test origins at rows 672 and 696 (horizon 24)."""
    folder = tmp_path_factory.mktemp("backtest")
    path = write_hourly_csv(folder / "hourly.csv", days=30)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    mp.setenv("GRUKIT_BACKEND", "reference")
    try:
        assert main(["forecast", "train", f"data={path}", *small_args(epochs=1)]) == 0
    finally:
        mp.undo()
    with open(path) as handle:
        y = np.array([float(row["load"]) for row in csv.DictReader(handle)])
    return folder, y


def test_backtest_metrics_match_an_independent_computation(run):
    folder, y = run
    metrics = json.loads((folder / "runs" / "forecast" / "train" / "metrics.json").read_text())
    # default: one origin every stride / 4 = 6 steps from the last test origin back to the first
    assert (metrics["backtest_origins"], metrics["backtest_step"]) == (5, 6)
    assert set(metrics["backtest"]) == {"model", "naive", "seasonal_naive"}
    assert all(set(m) == set(METRICS) and np.isfinite(list(m.values())).all() for m in metrics["backtest"].values())
    origins = np.arange(672, 697, 6)[:, None]
    steps = np.arange(24)
    actual = y[origins + steps]
    scale = np.abs(y[24:672] - y[:648]).mean()  # in-sample seasonal-naive MAE, season 24
    for kind, point in (("seasonal_naive", y[origins + steps - 24]), ("naive", y[origins - 1] + 0 * steps)):
        error = point - actual
        got = metrics["backtest"][kind]
        assert got["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-9)
        assert got["rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-9)
        assert got["mase"] == pytest.approx(np.abs(error).mean() / scale, rel=1e-9)
        assert got["smape"] == pytest.approx((200 * np.abs(error) / (np.abs(point) + np.abs(actual))).mean(), rel=1e-9)
    assert metrics["backtest"]["seasonal_naive"]["mase"] != metrics["test"]["seasonal_naive"]["mase"]


def test_backtest_key_sets_the_origins(run, monkeypatch, capsys):
    folder, _ = run
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    # backtest=2 steps back one whole stride: exactly the test origins, so exactly the test metrics
    assert main(["forecast", "val", "model=runs/forecast/train", "backtest=2", "name=two"]) == 0
    out = capsys.readouterr().out
    assert "rolling-origin backtest, 2 origins every 24 steps through the test period: MASE GRU" in out
    metrics = json.loads((folder / "runs" / "forecast" / "two" / "metrics.json").read_text())
    assert metrics["backtest_origins"] == 2 and metrics["backtest"] == metrics["test"]
    assert main(["forecast", "val", "model=runs/forecast/train", "backtest=26", "verbose=false"]) == 2
    assert capsys.readouterr().err == (
        "grukit: bad value for backtest: 26 origins do not fit in the test period (25 possible origins, one per "
        "step); use backtest=25 or less, or raise test_windows=\n"
    )


def test_elecdemand_backtest_layout():
    layout = ForecastTask.prepare(resolve()).layout
    origins, test = layout.backtest_origins, layout.test_origins
    assert len(origins) == 53 and layout.backtest_step == 12  # every 6 hours through the 14 test days
    assert origins[0] == test[0] and origins[-1] == test[-1] and (np.diff(origins) == 12).all()
