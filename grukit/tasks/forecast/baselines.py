"""Naive and seasonal-naive baselines, with quantiles from their own in-sample errors.

naive: the last observed value for every step; seasonal naive: the value one season before each step (for
step h of the horizon, ``season * (1 + h // season)`` steps back, so never past the origin). Their quantiles
add, to the point forecast, the empirical quantiles of the baseline's errors at the same step h over the
in-sample origins, which gives them intervals scored by the same pinball loss and coverage as the model.
"""

from __future__ import annotations

import numpy as np


def _lags(kind: str, horizon: int, season: int) -> np.ndarray:
    """How far before each forecast step (H,) the baseline looks: from the origin's previous value (naive)
    or one season before (seasonal)."""
    steps = np.arange(horizon)
    return steps + 1 if kind == "naive" else season * (1 + steps // season)


def baseline_forecast(
    kind: str, y: np.ndarray, origins: np.ndarray, horizon: int, season: int, quantiles: np.ndarray, in_sample_end: int
) -> np.ndarray:
    """Quantile forecasts (W, H, Q) of baseline ``kind`` ("naive" or "seasonal_naive") of y (N,) from
    ``origins`` (W,); quantile offsets from its errors at origins whose targets end before ``in_sample_end``."""
    lags = _lags(kind, horizon, season)
    steps = np.arange(horizon)
    point = y[origins[:, None] + steps - lags]  # (W, H)
    fit_origins = np.arange(int(lags.max()), in_sample_end - horizon + 1)
    fit_idx = fit_origins[:, None] + steps
    errors = y[fit_idx] - y[fit_idx - lags]  # (M, H)
    offsets = np.quantile(errors, quantiles, axis=0).T  # (H, Q)
    offsets -= offsets[:, [int(np.flatnonzero(np.isclose(quantiles, 0.5))[0])]]  # the median stays the point
    return point[..., None] + offsets[None]
