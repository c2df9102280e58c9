"""Forecast windows: where the train, validation and test origins lie, and the model inputs at an origin.

An origin t is the index of the first forecast step: the model sees target values before t and forecasts
rows t .. t + horizon - 1. Held-out origins sit at the end of the observed series, ``stride`` steps apart:
the test origins last, the validation origins before them (their targets end where the test targets
begin), and training origins before those (their targets end where the validation targets begin). Nothing
the model trains on overlaps a validation or test target.

Inputs at an origin (per target series, normalised by the mean and standard deviation of its lookback):
the past as ``lookback / season`` blocks of one season each (GRU steps, oldest first), and what is known
about the forecast window (known covariates, the lookback's values at the same phase, the calendar).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from grukit.errors import ConfigError, DataError
from grukit.tasks.forecast.data import ForecastFrame, auto_season, calendar_features

MIN_TRAIN_WINDOWS = 32  # automatic lookback: the longest (up to 7 seasons) that leaves this many
DEFAULT_HELD_OUT = 14  # test (and validation) origins when not set


@dataclass(frozen=True)
class Layout:
    """Resolved window settings and the origins of each split ((n,) int64 row indices)."""

    season: int
    horizon: int
    lookback: int
    stride: int
    train_origins: np.ndarray
    val_origins: np.ndarray
    test_origins: np.ndarray

    @property
    def in_sample_end(self) -> int:
        """Rows before the first test origin: what scales and statistics are computed on."""
        return int(self.test_origins[0])

    def settings(self) -> dict[str, int]:
        return {
            "season": self.season,
            "horizon": self.horizon,
            "lookback": self.lookback,
            "stride": self.stride,
            "test_windows": len(self.test_origins),
            "val_windows": len(self.val_origins),
        }


def resolve_layout(frame: ForecastFrame, cfg: dict) -> Layout:
    """The Layout for ``frame`` from the config keys season, horizon, lookback, stride, test_windows,
    val_windows (0 = automatic, see defaults.toml). Raises ConfigError for inconsistent settings and
    DataError when the series is too short for them, naming the keys to lower."""
    n = frame.n_observed
    season = cfg["season"] or auto_season(frame)
    horizon = cfg["horizon"] or season
    stride = cfg["stride"] or horizon
    n_test = cfg["test_windows"] or max(1, min(DEFAULT_HELD_OUT, n // 5 // stride))
    n_val = cfg["val_windows"] or n_test
    if cfg["lookback"] and cfg["lookback"] % season:
        low = cfg["lookback"] // season * season
        raise ConfigError(
            f"bad value for lookback: {cfg['lookback']} is not a multiple of season {season}; "
            f"use {max(season, low)} or {low + season}"
        )
    held_out = (n_test - 1) * stride + horizon + (n_val - 1) * stride + horizon
    first_val = n - held_out

    def train_windows(lookback: int) -> int:
        return first_val - horizon - lookback + 1

    if cfg["lookback"]:
        lookback = cfg["lookback"]
    else:
        candidates = [m * season for m in range(7, 0, -1)]
        lookback = next((lb for lb in candidates if train_windows(lb) >= MIN_TRAIN_WINDOWS), season)
    if train_windows(lookback) < 1:
        needed = lookback + horizon + held_out
        raise DataError(
            f"{frame.label}: {n} observed rows are too few for lookback {lookback} + horizon {horizon} and "
            f"{n_val} validation + {n_test} test windows ({needed} rows needed, one training window); "
            "lower lookback=, horizon=, val_windows= or test_windows=, or give a longer series"
        )
    last_test = n - horizon
    test = last_test - stride * np.arange(n_test - 1, -1, -1)
    last_val = int(test[0]) - horizon
    val = last_val - stride * np.arange(n_val - 1, -1, -1)
    train = np.arange(lookback, int(val[0]) - horizon + 1)
    return Layout(season, horizon, lookback, stride, train, val.astype(np.int64), test.astype(np.int64))


@dataclass(frozen=True)
class Scaling:
    """Covariate standardisation from the training data: known and past means and stds, (Ck,) and (Cp,)."""

    known_mean: np.ndarray
    known_std: np.ndarray
    past_mean: np.ndarray
    past_std: np.ndarray

    @staticmethod
    def fit(frame: ForecastFrame, end: int) -> Scaling:
        """Means and standard deviations of the covariates over rows [0, end) (std 0 becomes 1)."""

        def stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            std = values[:end].std(axis=0)
            return values[:end].mean(axis=0), np.where(std > 0, std, 1.0)

        return Scaling(*stats(frame.known), *stats(frame.past))

    def to_json(self) -> dict[str, list[float]]:
        return {key: getattr(self, key).tolist() for key in ("known_mean", "known_std", "past_mean", "past_std")}

    @staticmethod
    def from_json(values: dict[str, list[float]]) -> Scaling:
        return Scaling(**{key: np.asarray(value, dtype=np.float64) for key, value in values.items()})


def feature_sizes(frame: ForecastFrame, layout: Layout, calendar: bool) -> tuple[int, int]:
    """(step_features, future_features): the GRU's input size per block and the head's known-future size."""
    cal = calendar_features(frame, np.zeros(1, dtype=np.int64)).shape[1] if calendar else 0
    n_known, n_past = frame.known.shape[1], frame.past.shape[1]
    step = layout.season * (1 + n_known + n_past) + cal
    future = layout.horizon * (1 + n_known) + cal
    return step, future


class Windows:
    """Builds batches of model inputs from a frame. Rows past the end of the frame (up to one horizon) get
    generated times (calendar) and NaN targets; known covariates must exist wherever they are read."""

    def __init__(self, frame: ForecastFrame, layout: Layout, scaling: Scaling, calendar: bool) -> None:
        extra = layout.horizon
        n = len(frame.times) + extra
        self.layout = layout
        pad = np.full((frame.targets.shape[0], extra), np.nan)
        self.y = np.concatenate([frame.targets, pad], axis=1)  # (K, N + H)
        nan_rows = np.full((extra, frame.known.shape[1]), np.nan)
        self.known = np.concatenate([(frame.known - scaling.known_mean) / scaling.known_std, nan_rows])
        nan_rows = np.full((extra, frame.past.shape[1]), np.nan)
        self.past = np.concatenate([(frame.past - scaling.past_mean) / scaling.past_std, nan_rows])
        index = np.arange(n)
        self.calendar = calendar_features(frame, index) if calendar else np.zeros((n, 0))

    def batch(self, series: np.ndarray, origins: np.ndarray) -> dict[str, Tensor]:
        """Inputs for forecasts of target series ``series`` (B,) from ``origins`` (B,).

        Returns float32 tensors: past (L, B, step_features) with L = lookback / season blocks, oldest first;
        future (B, future_features); base (B, H) the seasonal naive; target (B, H) (NaN where unknown);
        and float64 mean, std (B, 1) to undo the per-window normalisation. All but mean/std are normalised.
        """
        lay = self.layout
        season, horizon, lookback = lay.season, lay.horizon, lay.lookback
        blocks = lookback // season
        rows = series[:, None]
        look_idx = origins[:, None] - lookback + np.arange(lookback)  # (B, lookback)
        values = self.y[rows, look_idx]
        mean = values.mean(axis=1, keepdims=True)
        std = values.std(axis=1, keepdims=True) + 1e-6
        norm = (values - mean) / std  # (B, lookback)
        batch = len(origins)
        block_idx = look_idx.reshape(batch, blocks, season)
        parts = [norm.reshape(batch, blocks, season)]
        for covariates in (self.known, self.past):
            if covariates.shape[1]:
                block = covariates[block_idx]  # (B, blocks, season, C)
                parts.append(block.transpose(0, 1, 3, 2).reshape(batch, blocks, -1))
        parts.append(self.calendar[block_idx[:, :, 0]])
        past = np.concatenate(parts, axis=-1)  # (B, blocks, step_features)

        steps = np.arange(horizon)
        future_idx = origins[:, None] + steps  # (B, H)
        same_phase = norm[:, steps % lookback]  # the lookback's value at each forecast step's phase
        future_parts = []
        if self.known.shape[1]:
            future_parts.append(self.known[future_idx].transpose(0, 2, 1).reshape(batch, -1))
        future = np.concatenate([*future_parts, same_phase, self.calendar[origins]], axis=-1)
        base = norm[:, lookback + steps - season * (1 + steps // season)]  # seasonal naive, (B, H)
        target = (self.y[rows, future_idx] - mean) / std

        def f32(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return {
            "past": f32(past.transpose(1, 0, 2)),
            "future": f32(future),
            "base": f32(base),
            "target": f32(target),
            "mean": torch.from_numpy(mean),
            "std": torch.from_numpy(std),
        }

    def actual(self, series: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """The target values forecast from ``origins``: (B, H) float64 (NaN where unknown)."""
        return self.y[series[:, None], origins[:, None] + np.arange(self.layout.horizon)]
