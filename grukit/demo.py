"""A day-ahead electricity demand forecaster on the bundled ``elecdemand`` series, evaluated honestly.

The series (Victoria, Australia, 2014) has 17,520 half-hours of demand (GW), temperature (deg C) and a
work-day flag. The last 14 days are held out. From each midnight of those 14 days the model forecasts the
next 48 half-hours, and is scored next to two baselines on exactly the same 14 x 48 targets:

- naive: the last observed half-hour, repeated for all 48 steps;
- seasonal naive: the same half-hour of the previous day.

MASE divides MAE by the in-sample MAE of the one-day (48-step) seasonal naive on the training part.

The model reads the past as a sequence of days: its GRU takes one step per day-sized block of 48
half-hours of demand, temperature and work-day flags (the 48 half-hours before the origin, the 48 before
those, and so on 7 days back), fed oldest first.
A small head combines the GRU's last state with what is known about the target day (its temperature, its
work-day flags, the demand of the same day one week earlier, the calendar) and adds a correction to the
seasonal naive forecast. Demand is normalised per window by the mean and standard deviation of the lookback.
Training windows start at every half-hour of the training part (their targets never reach the test days).

Evaluation is rolling-origin: the forecast made at the midnight starting test day d sees the observed
demand up to that midnight (including test days before d), as the baselines do, and never anything after
it. The future temperature fed to the model is the observed one, i.e. a perfect temperature forecast: the
printed report says so. The settings (7 days of lookback, hidden 64, 5 epochs, the learning rate) were
chosen on a validation period, the 14 days before the test days, without looking at the test days.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch import Tensor, nn

from grukit.data.bundled import load
from grukit.nn.gru import GRU

HORIZON = 48  # half-hours forecast from each origin (one day)
SEASON = 48  # half-hours per day: the seasonal-naive lag and the MASE scale's lag
TEST_DAYS = 14
LOOKBACK_DAYS = 7  # GRU steps: one per past day
CALENDAR = 4  # sin/cos of the half-hour of the day and of the day of the week
STEP_FEATURES = 3 * SEASON + CALENDAR  # a past day: demand, temperature, work-day flags, calendar at its start
FUTURE_FEATURES = 3 * HORIZON + CALENDAR  # the target day: temperature, work-day flags, demand a week before


class DayBlockForecaster(nn.Module):
    """GRU over day-sized blocks of the past, plus a head that corrects the seasonal-naive forecast.

    past: (L, B, STEP_FEATURES) one step per past day block, oldest first (time-major, nn.GRU's default);
    future: (B, FUTURE_FEATURES) what is known about the target day; base: (B, 48) the seasonal naive,
    normalised. Returns (B, 48): the normalised forecast.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru = GRU(STEP_FEATURES, hidden)
        self.head = nn.Sequential(
            nn.Linear(hidden + FUTURE_FEATURES, 2 * hidden),
            nn.GELU(),
            nn.Linear(2 * hidden, HORIZON),
        )

    def forward(self, past: Tensor, future: Tensor, base: Tensor) -> Tensor:
        _, h_n = self.gru(past)  # h_n: (1, B, H)
        return base + self.head(torch.cat([h_n[-1], future], dim=-1))


class Windows:
    """Builds model inputs for forecast origins from the whole series.

    Demand enters only from before the origin; the target day's temperature, work-day flags and calendar are
    treated as known in advance.

    demand, temperature, workday: (N,) float; minutes: (N,) int minutes since 1970-01-01 (the timestamps).
    Temperature is standardised with the training part's ``temp_mean`` and ``temp_std``.
    """

    def __init__(
        self,
        demand: np.ndarray,
        temperature: np.ndarray,
        workday: np.ndarray,
        minutes: np.ndarray,
        temp_mean: float,
        temp_std: float,
    ) -> None:
        self.demand = demand
        self.temperature = (temperature - temp_mean) / temp_std
        self.workday = workday.astype(np.float64)
        step_of_day = (minutes // 30) % SEASON
        day = minutes // (24 * 60)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
        self.calendar = np.stack(
            [
                np.sin(2 * math.pi * step_of_day / SEASON),
                np.cos(2 * math.pi * step_of_day / SEASON),
                np.sin(2 * math.pi * weekday / 7),
                np.cos(2 * math.pi * weekday / 7),
            ],
            axis=-1,
        )  # (N, 4)

    def batch(self, origins: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
        """Inputs and target for forecasts made at ``origins`` (B,) (index of the first forecast step).

        Returns past: (L, B, STEP_FEATURES), future: (B, FUTURE_FEATURES), base: (B, 48), target: (B, 48)
        (normalised, float32) and the per-window mean and std: (B, 1) numpy arrays, to undo the normalisation.
        Needs origins - 7 days >= 0 and origins + 48 <= N; callers keep test targets out of training.
        """
        steps = np.arange(SEASON)
        days_back = np.arange(LOOKBACK_DAYS, 0, -1)  # oldest block first
        past_idx = origins[:, None, None] - days_back[None, :, None] * SEASON + steps  # (B, L, 48)
        future_idx = origins[:, None] + np.arange(HORIZON)  # (B, 48)
        lookback = self.demand[past_idx]  # (B, L, 48)
        mean = lookback.mean(axis=(1, 2))[:, None]
        std = lookback.std(axis=(1, 2))[:, None] + 1e-6
        norm = (lookback - mean[:, :, None]) / std[:, :, None]
        past = np.concatenate(
            [norm, self.temperature[past_idx], self.workday[past_idx], self.calendar[past_idx[:, :, 0]]], axis=-1
        )
        week_ago = norm[:, -7]  # the target day's half-hours one week earlier
        future = np.concatenate(
            [self.temperature[future_idx], self.workday[future_idx], week_ago, self.calendar[origins]], axis=-1
        )
        base = norm[:, -1]  # the previous day: the seasonal naive
        target = (self.demand[future_idx] - mean) / std

        def as_tensor(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return as_tensor(past.transpose(1, 0, 2)), as_tensor(future), as_tensor(base), as_tensor(target), mean, std


def _scores(forecast: np.ndarray, actual: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE and MASE of ``forecast`` against ``actual``, both (W, 48); scale: in-sample seasonal MAE."""
    err = forecast - actual
    mae = float(np.abs(err).mean())
    return {"mae": mae, "rmse": float(np.sqrt(np.square(err).mean())), "mase": mae / scale}


def _train(
    model: DayBlockForecaster, windows: Windows, origins: np.ndarray, epochs: int, seed: int, batch_size: int = 128
) -> None:
    """Adam with a cosine-decaying learning rate on the L1 loss (the error MAE and MASE measure)."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = epochs * math.ceil(len(origins) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
    model.train()
    for _ in range(epochs):
        order = rng.permutation(origins)
        for start in range(0, len(order), batch_size):
            past, future, base, target, _, _ = windows.batch(order[start : start + batch_size])
            loss = (model(past, future, base) - target).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


def _experiment(data: dict[str, np.ndarray], epochs: int, seed: int, hidden: int) -> dict:
    """Train on all but the last TEST_DAYS days of ``data`` and score on those; see the module docstring."""
    demand = data["demand"].astype(np.float64)
    temperature = data["temperature"].astype(np.float64)
    n_train = len(demand) - TEST_DAYS * SEASON
    minutes = data["timestamp"].astype("datetime64[m]").astype(np.int64)
    train_temp = temperature[:n_train]
    windows = Windows(demand, temperature, data["workday"], minutes, train_temp.mean(), train_temp.std())
    train_origins = np.arange(LOOKBACK_DAYS * SEASON, n_train - HORIZON + 1)
    test_origins = n_train + SEASON * np.arange(TEST_DAYS)
    scale = float(np.abs(demand[SEASON:n_train] - demand[: n_train - SEASON]).mean())

    torch.manual_seed(seed)
    model = DayBlockForecaster(hidden)
    start = time.perf_counter()
    _train(model, windows, train_origins, epochs, seed)
    train_seconds = time.perf_counter() - start

    model.eval()
    past, future, base, _, mean, std = windows.batch(test_origins)
    with torch.no_grad():
        forecast = model(past, future, base).double().numpy() * std + mean
    targets = test_origins[:, None] + np.arange(HORIZON)  # (14, 48)
    actual = demand[targets]
    naive = np.repeat(demand[test_origins - 1][:, None], HORIZON, axis=1)
    seasonal = demand[targets - SEASON]
    return {
        "gru": _scores(forecast, actual, scale),
        "naive": _scores(naive, actual, scale),
        "seasonal_naive": _scores(seasonal, actual, scale),
        "mase_scale": scale,
        "train_seconds": train_seconds,
        "train_windows": len(train_origins),
        "test_windows": len(test_origins),
        "train_period": f"{data['timestamp'][0]} .. {data['timestamp'][n_train - 1]}",
        "test_period": f"{data['timestamp'][n_train]} .. {data['timestamp'][-1]}",
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _report(r: dict) -> str:
    """The printed summary of a ``run`` result."""
    rows = [
        ("naive (last value)", r["naive"]),
        ("seasonal naive (previous day)", r["seasonal_naive"]),
        (f"GRU (hidden {r['hidden']})", r["gru"]),
    ]
    ratio = r["gru"]["mase"] / r["seasonal_naive"]["mase"]
    verdict = "beats" if ratio < 1 else "does NOT beat"
    lines = [
        "grukit demo: day-ahead forecasts of Victoria's electricity demand (bundled elecdemand, 2014, GW)",
        f"train {r['train_period']} ({r['train_windows']} windows); test {r['test_period']}:",
        f"  {r['test_windows']} forecasts of {HORIZON} half-hours, one from each midnight, same targets for all models",
        "",
        f"{'model':<31}{'MAE':>8}{'RMSE':>8}{'MASE':>8}",
        *(f"{name:<31}{m['mae']:>8.3f}{m['rmse']:>8.3f}{m['mase']:>8.3f}" for name, m in rows),
        "",
        f"MASE = MAE / {r['mase_scale']:.3f} GW, the in-sample MAE of the previous-day naive on the training part.",
        f"The GRU {verdict} seasonal naive: its MASE is {ratio:.2f}x seasonal naive's (lower is better).",
        "The GRU was given each target day's observed temperature (a perfect temperature forecast).",
        f"{r['gru_class']}: {_count(r['epochs'], 'epoch')}, seed {r['seed']}, trained in {r['train_seconds']:.1f} s "
        f"on {_count(r['threads'], 'torch thread')}; whole run {r['wall_seconds']:.1f} s.",
    ]
    return "\n".join(lines)


def run(epochs: int = 5, seed: int = 0, hidden: int = 64, threads: int | None = None, verbose: bool = True) -> dict:
    """Train the day-ahead GRU forecaster on bundled elecdemand, score it and the baselines on the last 14 days.

    threads: torch intra-op threads for the run (restored afterwards); None uses OMP_NUM_THREADS when set,
    else 1: this model is small (hidden 64, 7 steps), and on 2 shared cores a second thread made training
    1.7x to 6x slower. Prints a table of MAE, RMSE (GW) and MASE when ``verbose``.
    Returns {"gru" | "naive" | "seasonal_naive": {"mae", "rmse", "mase"}, plus the settings and timings}.
    """
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS") or 1)
    start = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = _experiment(load("elecdemand"), epochs, seed, hidden)
    finally:
        torch.set_num_threads(previous)
    result.update(
        epochs=epochs,
        seed=seed,
        hidden=hidden,
        threads=threads,
        gru_class=f"{GRU.__module__}.{GRU.__name__}",
        wall_seconds=time.perf_counter() - start,
    )
    if verbose:
        print(_report(result))
    return result
