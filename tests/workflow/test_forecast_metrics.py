"""Forecast metrics and baselines on hand-checked values, and the elecdemand baselines of the issue."""

from __future__ import annotations

import numpy as np
import pytest

from grukit.tasks.forecast.baselines import baseline_forecast
from grukit.tasks.forecast.metrics import forecast_metrics, seasonal_scale
from grukit.tasks.forecast.task import ForecastTask
from grukit.workflow.config import resolve

Q = np.array([0.1, 0.5, 0.9])


def test_metrics_by_hand():
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    forecast = np.stack([actual - 1, actual + np.array([[1.0, -1.0], [0.0, 0.0]]), actual + 1], axis=-1)
    m = forecast_metrics(actual, forecast, Q, scale=2.0)
    assert m["mae"] == 0.5 and m["mase"] == 0.25 and m["rmse"] == pytest.approx(np.sqrt(0.5))
    assert m["smape"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 4)
    assert m["coverage"] == 1.0
    # pinball: the 0.1 and 0.9 quantiles are 1 off on the right side (0.1 each), the median 0.5 * |error|
    assert m["pinball"] == pytest.approx((0.1 * 4 + 0.5 * 2 + 0.1 * 4) / 12)
    assert seasonal_scale(np.array([1.0, 2.0, 4.0, 7.0]), 2) == 4.0


def test_seasonal_naive_never_looks_past_the_origin():
    y = np.arange(100, dtype=float)
    f = baseline_forecast("seasonal_naive", y, np.array([50]), horizon=10, season=4, quantiles=Q, in_sample_end=50)
    assert f[0, :, 1].tolist() == [46, 47, 48, 49, 46, 47, 48, 49, 46, 47]
    naive = baseline_forecast("naive", y, np.array([50]), horizon=3, season=4, quantiles=Q, in_sample_end=50)
    assert naive[0, :, 1].tolist() == [49, 49, 49]
    assert (naive[..., 0] <= naive[..., 1]).all() and (naive[..., 1] <= naive[..., 2]).all()


def test_elecdemand_baselines_match_the_issue():
    task = ForecastTask.prepare(resolve())
    base = task.baseline_metrics("test")
    assert base["seasonal_naive"]["mase"] == pytest.approx(0.819, abs=1e-3)
    assert base["seasonal_naive"]["mae"] == pytest.approx(0.303, abs=1e-3)
    assert base["naive"]["mase"] == pytest.approx(1.195, abs=1e-3)
    assert task._scale(0) == pytest.approx(0.370, abs=1e-3)
