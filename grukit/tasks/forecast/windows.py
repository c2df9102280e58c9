"""Forecast windows: where the train, validation and test origins lie, and the model inputs at an origin.

An origin t is the index of the first forecast step: the model sees target values before t and forecasts
rows t .. t + horizon - 1. Held-out origins sit at the end of the observed series, ``stride`` steps apart:
the test origins last, the validation origins before them (their targets end where the test targets
begin), and training origins before those (their targets end where the validation targets begin). Nothing
the model trains on overlaps a validation or test target. The rolling-origin backtest origins step back
from the last test origin through the test period, every ``backtest_step`` steps (any phase of the
season), without retraining. With several series each gets these origins at its own end, and every series'
windows are stacked in one set of rows (``Layout.offsets``), so that one batch can mix series.

Inputs at an origin (per target column and series, normalised by the mean and standard deviation of its lookback):
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
    """Resolved window settings and the origins of each split, as rows of ``Windows`` (which stacks the series,
    series s from row ``offsets[s]``, each followed by ``horizon`` rows past its end). train_origins (M,);
    val_origins, test_origins and backtest_origins (S * n,): n per series, series after series."""

    season: int
    horizon: int
    lookback: int
    stride: int
    offsets: np.ndarray
    train_origins: np.ndarray
    val_origins: np.ndarray
    test_origins: np.ndarray
    backtest_origins: np.ndarray

    def per_series(self, origins: np.ndarray) -> np.ndarray:
        """Held-out ``origins`` (S * n,) as (S, n): row s holds series s's."""
        return origins.reshape(len(self.offsets), -1)

    def in_sample_end(self, series: int) -> int:
        """Rows of series ``series`` before its first test origin: what its scales and statistics use."""
        return int(self.per_series(self.test_origins)[series, 0] - self.offsets[series])

    @property
    def backtest_step(self) -> int:
        """Steps between consecutive backtest origins (0 with a single origin)."""
        origins = self.per_series(self.backtest_origins)[0]
        return int(origins[1] - origins[0]) if len(origins) > 1 else 0

    def settings(self) -> dict[str, int]:
        n_series = len(self.offsets)
        return {
            "season": self.season,
            "horizon": self.horizon,
            "lookback": self.lookback,
            "stride": self.stride,
            "test_windows": len(self.test_origins) // n_series,
            "val_windows": len(self.val_origins) // n_series,
        }


def resolve_layout(frames: list[ForecastFrame], cfg: dict, observed: list[int] | None = None) -> Layout:
    """The Layout for the series ``frames`` from the config keys season, horizon, lookback, stride,
    test_windows, val_windows and backtest (0 = automatic, see defaults.toml; automatic counts follow the
    shortest series). Raises ConfigError for inconsistent settings and DataError naming the series that is
    too short for them and the keys to lower. ``observed``: each series' observed rows to resolve and check
    the settings with, when ``frames`` hold only the end of each (a streamed file); default: the frames'."""
    observed = [frame.n_observed for frame in frames] if observed is None else observed
    n_min = min(observed)
    season = cfg["season"] or auto_season(frames[0])
    horizon = cfg["horizon"] or season
    stride = cfg["stride"] or horizon
    n_test = cfg["test_windows"] or max(1, min(DEFAULT_HELD_OUT, n_min // 5 // stride))
    n_val = cfg["val_windows"] or n_test
    if cfg["lookback"] and cfg["lookback"] % season:
        low = cfg["lookback"] // season * season
        raise ConfigError(
            f"bad value for lookback: {cfg['lookback']} is not a multiple of season {season}; "
            f"use {max(season, low)} or {low + season}"
        )
    held_out = (n_test - 1) * stride + horizon + (n_val - 1) * stride + horizon

    def train_windows(lookback: int) -> np.ndarray:
        """(S,) training windows of each series."""
        return np.array([n - held_out - horizon - lookback + 1 for n in observed])

    if cfg["lookback"]:
        lookback = cfg["lookback"]
    else:
        candidates = [m * season for m in range(7, 0, -1)]
        fits = (lb for lb in candidates if train_windows(lb).min() >= 1)
        lookback = next((lb for lb in fits if np.maximum(train_windows(lb), 0).sum() >= MIN_TRAIN_WINDOWS), season)
    for frame, n, windows in zip(frames, observed, train_windows(lookback), strict=True):
        if windows < 1:
            needed = lookback + horizon + held_out
            raise DataError(
                f"{frame.title}: {n} observed rows are too few for lookback {lookback} + horizon "
                f"{horizon} and {n_val} validation + {n_test} test windows ({needed} rows needed, one training "
                "window); lower lookback=, horizon=, val_windows= or test_windows=, or give a longer series"
            )
    span = (n_test - 1) * stride  # from the first test origin to the last
    n_backtest = cfg["backtest"] or span // max(1, stride // 4) + 1
    if n_backtest > span + 1:
        raise ConfigError(
            f"bad value for backtest: {n_backtest} origins do not fit in the test period ({span + 1} possible "
            f"origins, one per step); use backtest={span + 1} or less, or raise test_windows="
        )
    backtest_step = span // (n_backtest - 1) if n_backtest > 1 else 0
    offsets = np.cumsum([0] + [len(frame.times) + horizon for frame in frames[:-1]]).astype(np.int64)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": [], "backtest": []}
    for frame, offset in zip(frames, offsets, strict=True):
        last_test = frame.n_observed - horizon
        test = last_test - stride * np.arange(n_test - 1, -1, -1)
        last_val = int(test[0]) - horizon
        val = last_val - stride * np.arange(n_val - 1, -1, -1)
        local = {
            "train": np.arange(lookback, int(val[0]) - horizon + 1),
            "val": val,
            "test": test,
            "backtest": last_test - backtest_step * np.arange(n_backtest - 1, -1, -1),
        }
        for name, origins in local.items():
            splits[name].append(origins.astype(np.int64) + offset)
    origins = {f"{name}_origins": np.concatenate(parts) for name, parts in splits.items()}
    return Layout(season, horizon, lookback, stride, offsets, **origins)


@dataclass(frozen=True)
class Scaling:
    """Covariate standardisation from the training data: known and past means and stds, (Ck,) and (Cp,)."""

    known_mean: np.ndarray
    known_std: np.ndarray
    past_mean: np.ndarray
    past_std: np.ndarray

    @staticmethod
    def fit(frames: list[ForecastFrame], layout: Layout) -> Scaling:
        """Means and standard deviations of the covariates over the in-sample rows of every series (std 0
        becomes 1)."""

        def stats(name: str) -> tuple[np.ndarray, np.ndarray]:
            values = np.concatenate([getattr(f, name)[: layout.in_sample_end(s)] for s, f in enumerate(frames)])
            std = values.std(axis=0)
            return values.mean(axis=0), np.where(std > 0, std, 1.0)

        return Scaling(*stats("known"), *stats("past"))

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


def _pad(values: np.ndarray, rows: int) -> np.ndarray:
    """``values`` (N, C) followed by ``rows`` rows of NaN: (N + rows, C)."""
    return np.concatenate([values, np.full((rows, values.shape[1]), np.nan)])


class Windows:
    """Builds batches of model inputs from the series ``frames``, stacked as ``layout.offsets`` says. Rows past
    the end of each series (one horizon) get generated times (calendar) and NaN targets; known covariates must
    exist wherever they are read."""

    def __init__(self, frames: list[ForecastFrame], layout: Layout, scaling: Scaling, calendar: bool) -> None:
        self.layout = layout
        ys, knowns, pasts, calendars = [], [], [], []
        extra = layout.horizon
        for frame in frames:
            ys.append(_pad(frame.targets.T, extra).T)
            knowns.append(_pad((frame.known - scaling.known_mean) / scaling.known_std, extra))
            pasts.append(_pad((frame.past - scaling.past_mean) / scaling.past_std, extra))
            index = np.arange(len(frame.times) + layout.horizon)
            calendars.append(calendar_features(frame, index) if calendar else np.zeros((len(index), 0)))
        self.y = np.concatenate(ys, axis=1)  # (K, rows)
        self.known = np.concatenate(knowns)  # (rows, Ck)
        self.past = np.concatenate(pasts)  # (rows, Cp)
        self.calendar = np.concatenate(calendars)  # (rows, C)

    def batch(self, target: np.ndarray, origins: np.ndarray) -> dict[str, Tensor]:
        """Inputs for forecasts of target columns ``target`` (B,) from ``origins`` (B,) (rows of the stacked series).

        Returns float32 tensors: past (L, B, step_features) with L = lookback / season blocks, oldest first;
        future (B, future_features); base (B, H) the seasonal naive; target (B, H) (NaN where unknown);
        and float64 mean, std (B, 1) to undo the per-window normalisation. All but mean/std are normalised.
        """
        lay = self.layout
        season, horizon, lookback = lay.season, lay.horizon, lay.lookback
        blocks = lookback // season
        rows = target[:, None]
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

    def actual(self, target: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """The values of target columns ``target`` (B,) forecast from ``origins`` (B,): (B, H) float64 (NaN where
        unknown)."""
        return self.y[target[:, None], origins[:, None] + np.arange(self.layout.horizon)]
