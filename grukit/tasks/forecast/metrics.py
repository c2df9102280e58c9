"""Forecast accuracy metrics, the same for the model and every baseline.

All take actual (W, H) and a quantile forecast (W, H, Q) for quantile levels (Q,) including 0.5, whose
median is the point forecast. MASE divides MAE by ``scale``, the in-sample MAE of the seasonal naive.
"""

from __future__ import annotations

import numpy as np

METRICS = ("mae", "rmse", "mase", "smape", "pinball", "coverage")


def seasonal_scale(y: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal naive with lag ``season`` on y (N,) (lag 1 when season is 1)."""
    return float(np.abs(y[season:] - y[:-season]).mean())


def forecast_metrics(actual: np.ndarray, forecast: np.ndarray, quantiles: np.ndarray, scale: float) -> dict:
    """MAE, RMSE, MASE, sMAPE (%, 0..200), mean pinball loss over the quantiles, and coverage: the share of
    actuals inside the interval between the lowest and highest quantile (nominal: their difference)."""
    point = forecast[..., int(np.flatnonzero(np.isclose(quantiles, 0.5))[0])]
    error = point - actual
    mae = float(np.abs(error).mean())
    denominator = np.abs(point) + np.abs(actual)
    smape = 200 * np.divide(np.abs(error), denominator, out=np.zeros_like(error), where=denominator > 0)
    diff = actual[..., None] - forecast
    pinball = np.maximum(quantiles * diff, (quantiles - 1) * diff).mean()
    inside = (actual >= forecast[..., 0]) & (actual <= forecast[..., -1])
    return {
        "mae": mae,
        "rmse": float(np.sqrt(np.square(error).mean())),
        "mase": mae / scale,
        "smape": float(smape.mean()),
        "pinball": float(pinball),
        "coverage": float(inside.mean()),
    }
