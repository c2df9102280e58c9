"""The forecast task: what the generic workflow (trainer, Model, CLI) needs to train, score, predict and export
a forecaster. Built from a config and data (``ForecastTask.prepare``) or from a checkpoint's ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.tasks.forecast.baselines import baseline_forecast
from grukit.tasks.forecast.data import ForecastFrame, load_frame
from grukit.tasks.forecast.export import export
from grukit.tasks.forecast.metrics import METRICS, forecast_metrics, seasonal_scale
from grukit.tasks.forecast.model import SeasonBlockForecaster, pinball_loss, sorted_quantiles
from grukit.tasks.forecast.windows import Layout, Scaling, Windows, feature_sizes, resolve_layout

BASELINES = ("naive", "seasonal_naive")


@dataclass
class Forecast:
    """Forecasts from one origin: times (H,), values (K, H, Q) per target and quantile, actual (K, H) or None."""

    target_names: list[str]
    quantiles: list[float]
    times: np.ndarray
    values: np.ndarray
    actual: np.ndarray | None
    note: str = ""

    @property
    def point(self) -> np.ndarray:
        """(K, H): the median forecast."""
        return self.values[..., self.quantiles.index(0.5)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (target, step): time, target, q0.1, ..., and actual when known."""
        out = []
        for k, name in enumerate(self.target_names):
            for h, time in enumerate(self.times):
                row: dict[str, Any] = {"time": str(time), "target": name}
                row.update({f"q{q:g}": float(f"{self.values[k, h, i]:.6g}") for i, q in enumerate(self.quantiles)})
                if self.actual is not None:
                    row["actual"] = float(f"{self.actual[k, h]:.6g}")
                out.append(row)
        return out


@dataclass
class ForecastTask:
    """A forecast problem: checked data, its windows and settings. cfg is the resolved config (no "auto"
    left in the keys this task resolves); meta is what a checkpoint must hold to rebuild the network."""

    cfg: dict[str, Any]
    frame: ForecastFrame
    layout: Layout
    scaling: Scaling
    windows: Windows = field(init=False)
    monitor = "mase"  # validation metric for early stopping and the best checkpoint (lower is better)
    loss_name = "pinball, normalised"  # what the training loss is, for the curves plot
    example_name = "windows"  # what export checks on
    export = staticmethod(export)

    def __post_init__(self) -> None:
        self.windows = Windows(self.frame, self.layout, self.scaling, self.cfg["calendar"])
        self.quantiles = np.asarray(self.cfg["quantiles"])

    # ------------------------------------------------------------ construction

    @staticmethod
    def prepare(cfg: dict[str, Any], meta: dict[str, Any] | None = None) -> ForecastTask:
        """Read and check the data named by cfg["data"], resolve windows and settings. With ``meta`` (from a
        checkpoint) the columns, windows and covariate scaling are the trained model's, checked against the
        data. Returns a task whose ``cfg`` has every automatic setting filled in."""
        cfg = dict(cfg)
        if meta is None:
            frame = load_frame(cfg["data"], cfg["time"], cfg["target"], cfg["known"], cfg["past"])
        else:
            frame = load_frame(cfg["data"], meta["time"], meta["target"], meta["known"], meta["past"])
        layout = resolve_layout(frame, cfg)
        cfg.update(layout.settings())
        cfg.update(time=frame.time_name, target=frame.target_names, known=frame.known_names, past=frame.past_names)
        if meta is not None and meta["step_unit"] != frame.step_unit:
            raise DataError(f"{frame.label}: its time step unit differs from the data the model was trained on")
        scaling = Scaling.fit(frame, layout.in_sample_end) if meta is None else Scaling.from_json(meta["scaling"])
        return ForecastTask(cfg, frame, layout, scaling)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint stores besides the config: columns, feature sizes and covariate scaling."""
        step_features, future_features = feature_sizes(self.frame, self.layout, self.cfg["calendar"])
        return {
            "time": self.frame.time_name,
            "target": self.frame.target_names,
            "known": self.frame.known_names,
            "past": self.frame.past_names,
            "step_unit": self.frame.step_unit,
            "step_features": step_features,
            "future_features": future_features,
            "scaling": self.scaling.to_json(),
        }

    @staticmethod
    def build_network(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
        """The untrained network for the resolved ``cfg`` and ``meta``."""
        if cfg["model"] not in ("gru",) and not cfg["model"].endswith(".safetensors"):
            raise ConfigError(f"model {cfg['model']!r} is not implemented yet for forecast; use model=gru")
        return SeasonBlockForecaster(
            meta["step_features"],
            meta["future_features"],
            cfg["horizon"],
            len(cfg["quantiles"]),
            hidden=cfg["hidden"],
            layers=cfg["layers"],
            dropout=cfg["dropout"],
            layer_norm=cfg["layer_norm"],
        )

    # ------------------------------------------------------------ training

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        """Shuffled training batches over every (target series, training origin) pair."""
        n_series = len(self.frame.target_names)
        origins = self.layout.train_origins
        pairs = rng.permutation(n_series * len(origins))
        for start in range(0, len(pairs), batch):
            chosen = pairs[start : start + batch]
            yield self.windows.batch(chosen // len(origins), origins[chosen % len(origins)])

    def steps_per_epoch(self, batch: int) -> int:
        return -(-len(self.frame.target_names) * len(self.layout.train_origins) // batch)

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device) -> Tensor:
        """Mean pinball loss over the quantiles, in normalised units."""
        output = net(batch["past"].to(device), batch["future"].to(device), batch["base"].to(device))
        quantiles = torch.as_tensor(self.quantiles, dtype=output.dtype, device=device)
        return pinball_loss(output, batch["target"].to(device), quantiles)

    # ------------------------------------------------------------ evaluation

    def _origins(self, split: str) -> np.ndarray:
        return {"val": self.layout.val_origins, "test": self.layout.test_origins}[split]

    @torch.no_grad()
    def forecast(self, net: nn.Module, series: int, origins: np.ndarray, device: torch.device) -> np.ndarray:
        """Quantile forecasts of target ``series`` from ``origins`` (W,): (W, H, Q) float64 in data units."""
        net.eval()
        batch = self.windows.batch(np.full(len(origins), series), origins)
        output = net(batch["past"].to(device), batch["future"].to(device), batch["base"].to(device))
        output = sorted_quantiles(output).double().cpu()
        return (output * batch["std"][..., None] + batch["mean"][..., None]).numpy()

    @torch.no_grad()
    def calibrate(self, net: nn.Module, device: torch.device) -> list[float]:
        """Set ``net.quantile_offsets`` so that on the validation windows each quantile level q (except the
        median, the point forecast) has a share q of the actuals below it (split-conformal style recalibration
        in normalised units, so intervals scale with each window). Returns the offsets."""
        net.eval()
        net.quantile_offsets.zero_()
        origins = self.layout.val_origins
        residuals = []
        for k in range(len(self.frame.target_names)):
            batch = self.windows.batch(np.full(len(origins), k), origins)
            output = net(batch["past"].to(device), batch["future"].to(device), batch["base"].to(device))
            output = sorted_quantiles(output).double().cpu().numpy()
            residuals.append((batch["target"].double().numpy()[..., None] - output).reshape(-1, output.shape[-1]))
        residuals = np.concatenate(residuals)
        offsets = [0.0 if q == 0.5 else float(np.quantile(residuals[:, i], q)) for i, q in enumerate(self.quantiles)]
        net.quantile_offsets.copy_(torch.tensor(offsets))
        return offsets

    def _scale(self, series: int) -> float:
        return seasonal_scale(self.frame.targets[series, : self.layout.in_sample_end], self.layout.season)

    def evaluate(self, net: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        """The model's metrics on the "val" or "test" origins, averaged over the target series."""
        origins = self._origins(split)
        per_series = []
        for k in range(len(self.frame.target_names)):
            actual = self.windows.actual(np.full(len(origins), k), origins)
            forecast = self.forecast(net, k, origins, device)
            per_series.append(forecast_metrics(actual, forecast, self.quantiles, self._scale(k)))
        return {name: float(np.mean([m[name] for m in per_series])) for name in METRICS}

    def baseline_metrics(self, split: str) -> dict[str, dict[str, float]]:
        """Each baseline's metrics on the split's origins, under the model's metric names."""
        origins = self._origins(split)
        out = {}
        for kind in BASELINES:
            per_series = []
            for k in range(len(self.frame.target_names)):
                y = self.frame.targets[k, : self.frame.n_observed]
                forecast = baseline_forecast(
                    kind, y, origins, self.layout.horizon, self.layout.season, self.quantiles, self.layout.in_sample_end
                )
                actual = self.windows.actual(np.full(len(origins), k), origins)
                per_series.append(forecast_metrics(actual, forecast, self.quantiles, self._scale(k)))
            out[kind] = {name: float(np.mean([m[name] for m in per_series])) for name in METRICS}
        return out

    def report(self, net: nn.Module, device: torch.device) -> dict[str, Any]:
        """metrics.json: the test metrics of the model and of each baseline, and what they were computed on."""
        lay = self.layout
        first, last = int(lay.test_origins[0]), int(lay.test_origins[-1]) + lay.horizon - 1
        scales = [self._scale(k) for k in range(len(self.frame.target_names))]
        return {
            "test": {"model": self.evaluate(net, "test", device), **self.baseline_metrics("test")},
            "val": {"model": self.evaluate(net, "val", device), **self.baseline_metrics("val")},
            "test_period": f"{self.frame.time_text(first)} .. {self.frame.time_text(last)}",
            "test_origins": [self.frame.time_text(int(t)) for t in lay.test_origins],
            "horizon": lay.horizon,
            "season": lay.season,
            "quantiles": self.cfg["quantiles"],
            "interval": f"{self.quantiles[0]:g}..{self.quantiles[-1]:g} quantiles "
            f"(nominal coverage {self.quantiles[-1] - self.quantiles[0]:.2f})",
            "mase_scale": scales[0] if len(scales) == 1 else scales,
            "targets": self.frame.target_names,
            "data": self.frame.label,
            "train_windows": len(lay.train_origins) * len(self.frame.target_names),
        }

    @staticmethod
    def table(report: dict[str, Any]) -> str:
        """The printed test table of a ``report``: one row per model and baseline."""
        rows = [("GRU", report["test"]["model"]), *((n.replace("_", " "), report["test"][n]) for n in BASELINES)]
        head = f"{'model':<16}" + "".join(f"{name.upper() if name != 'smape' else 'sMAPE':>10}" for name in METRICS)
        lines = [
            f"test: {report['data']}, {len(report['test_origins'])} origins x horizon {report['horizon']}, "
            f"{report['test_period']}",
            head,
            *(f"{name:<16}" + "".join(f"{m[k]:>10.3f}" for k in METRICS) for name, m in rows),
            f"MASE scale: in-sample MAE of the seasonal naive (season {report['season']}); coverage of the "
            f"{report['interval']}.",
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ prediction

    def predict(self, net: nn.Module, device: torch.device) -> Forecast:
        """Forecast the horizon after the last observed target value. When the model needs known covariates
        that the data lacks for those steps, forecast the last ``horizon`` observed steps instead (with actuals)."""
        frame, horizon = self.frame, self.layout.horizon
        origin = frame.n_observed
        note = ""
        if frame.known.shape[1] and (
            len(frame.times) < origin + horizon or not np.isfinite(frame.known[origin : origin + horizon]).all()
        ):
            origin = frame.n_observed - horizon
            note = (
                f"the data has no known covariates ({', '.join(frame.known_names)}) for the {horizon} steps after "
                f"its last {frame.target_names[0]} value, so this forecasts its last {horizon} observed steps (with "
                "actuals); to forecast the future, add those rows with the covariates filled and the target empty"
            )
        if origin < self.layout.lookback:
            raise DataError(f"{frame.label}: predict needs at least {self.layout.lookback + horizon} rows")
        origins = np.array([origin])
        values = np.stack([self.forecast(net, k, origins, device)[0] for k in range(len(frame.target_names))])
        actual = np.stack([self.windows.actual(np.array([k]), origins)[0] for k in range(len(frame.target_names))])
        times = frame.time_at(origin + np.arange(horizon))
        return Forecast(
            frame.target_names, self.cfg["quantiles"], times, values, None if np.isnan(actual).all() else actual, note
        )

    def example_inputs(self) -> dict[str, Tensor]:
        """Real inputs (the test origins of the first series) for export checks."""
        origins = self.layout.test_origins
        return self.windows.batch(np.zeros(len(origins), dtype=np.int64), origins)

    def describe(self) -> str:
        """One line about the data, windows and network, printed when training starts."""
        cfg, frame = self.cfg, self.frame
        known = f", known {', '.join(frame.known_names)}" if frame.known_names else ""
        past = f", past {', '.join(frame.past_names)}" if frame.past_names else ""
        return (
            f"{frame.label}, {frame.n_observed} rows, target {', '.join(frame.target_names)}{known}{past}"
            f"{' + calendar' if self.windows.calendar.shape[1] else ''}; season {cfg['season']}, horizon "
            f"{cfg['horizon']}, lookback {cfg['lookback']}; {len(self.layout.train_origins)} training origins, "
            f"{cfg['val_windows']} validation and {cfg['test_windows']} test origins; GRU hidden {cfg['hidden']} x "
            f"{cfg['layers']}"
        )

    def plot(self, net: nn.Module, device: torch.device, run_dir: Path) -> None:
        """forecast.png in ``run_dir``: the test forecasts (median and interval) against the actuals, first
        target series."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        origins = self.layout.test_origins
        forecast = self.forecast(net, 0, origins, device)
        actual = self.windows.actual(np.zeros(len(origins), dtype=np.int64), origins)
        fig, ax = plt.subplots(figsize=(12, 4))
        mid = self.cfg["quantiles"].index(0.5)
        for w, origin in enumerate(origins):
            x = origin + np.arange(self.layout.horizon)
            ax.fill_between(
                x,
                forecast[w, :, 0],
                forecast[w, :, -1],
                color="tab:blue",
                alpha=0.25,
                label="interval" if w == 0 else None,
            )
            ax.plot(x, forecast[w, :, mid], color="tab:blue", lw=1, label="forecast (median)" if w == 0 else None)
            ax.plot(x, actual[w], color="black", lw=1, label="actual" if w == 0 else None)
        ax.set_xlabel(f"row of {self.frame.label}")
        ax.set_ylabel(self.frame.target_names[0])
        ax.set_title(f"test forecasts, {len(origins)} origins x horizon {self.layout.horizon}")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(run_dir / "forecast.png", dpi=100)
        plt.close(fig)
