"""The forecast task: what the generic workflow (trainer, Model, CLI) needs to train, score, predict and export
a forecaster. Built from a config and data (``ForecastTask.prepare``) or from a checkpoint's ``meta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grukit.errors import DataError
from grukit.tasks.encoders import LABELS, check_architecture
from grukit.tasks.forecast.baselines import baseline_forecast
from grukit.tasks.forecast.data import ForecastFrame, load_frames
from grukit.tasks.forecast.export import export
from grukit.tasks.forecast.metrics import METRICS, forecast_metrics, seasonal_scale
from grukit.tasks.forecast.model import SeasonBlockForecaster, pinball_loss, sorted_quantiles
from grukit.tasks.forecast.stream import Stream, prepare_stream
from grukit.tasks.forecast.windows import Layout, Scaling, Windows, feature_sizes, resolve_layout
from grukit.tasks.report import metric_lines

BASELINES = ("naive", "seasonal_naive")
SPLITS = ("test", "val", "backtest")


@dataclass
class Forecast:
    """Forecasts from one origin: times (H,), values (K, H, Q) per target and quantile, actual (K, H) or None."""

    target_names: list[str]
    quantiles: list[float]
    times: np.ndarray
    values: np.ndarray
    actual: np.ndarray | None
    note: str = ""
    series_id: str | None = None  # the series' id when the data has a series column

    @property
    def point(self) -> np.ndarray:
        """(K, H): the median forecast."""
        return self.values[..., self.quantiles.index(0.5)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (target, step): series (with a series column), time, target, q0.1, ..., and actual when
        known."""
        out = []
        first = {} if self.series_id is None else {"series": self.series_id}
        for k, name in enumerate(self.target_names):
            for h, time in enumerate(self.times):
                row: dict[str, Any] = {**first, "time": str(time), "target": name}
                row.update({f"q{q:g}": float(f"{self.values[k, h, i]:.6g}") for i, q in enumerate(self.quantiles)})
                if self.actual is not None:
                    row["actual"] = float(f"{self.actual[k, h]:.6g}")
                out.append(row)
        return out


@dataclass
class SeriesForecasts:
    """The forecasts of data with a series column: one ``Forecast`` per series id, in the data's order."""

    forecasts: dict[str, Forecast]
    note: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """Every series' ``Forecast.rows``, series after series (each row starts with its series id)."""
        return [row for forecast in self.forecasts.values() for row in forecast.rows()]


@dataclass
class ForecastTask:
    """A forecast problem: checked data, its windows and settings. cfg is the resolved config (no "auto"
    left in the keys this task resolves); meta is what a checkpoint must hold to rebuild the network."""

    cfg: dict[str, Any]
    frames: list[ForecastFrame]  # one per series (one without a series column); a streamed file's tail
    layout: Layout
    scaling: Scaling
    stream: Stream | None = None  # stream=true: reads the training windows from the file, chunk by chunk
    windows: Windows = field(init=False)
    monitor = "mase"  # validation metric for early stopping and the best checkpoint (lower is better)
    loss_name = "pinball, normalised"  # what the training loss is, for the curves plot
    example_name = "windows"  # what export checks on
    export = staticmethod(export)

    def __post_init__(self) -> None:
        self.windows = Windows(self.frames, self.layout, self.scaling, self.cfg["calendar"])
        self.quantiles = np.asarray(self.cfg["quantiles"])

    @property
    def frame(self) -> ForecastFrame:
        """The first series: its columns, time step and file are every series'."""
        return self.frames[0]

    # ------------------------------------------------------------ construction

    @staticmethod
    def prepare(cfg: dict[str, Any], meta: dict[str, Any] | None = None) -> ForecastTask:
        """Read and check the data named by cfg["data"], resolve windows and settings. With ``meta`` (from a
        checkpoint) the columns, windows and covariate scaling are the trained model's, checked against the
        data. Returns a task whose ``cfg`` has every automatic setting filled in."""
        cfg = dict(cfg)
        columns = cfg if meta is None else {"series": "", **meta}  # checkpoints from before series= have none
        stream = None
        if cfg["stream"]:
            tail, layout, stream = prepare_stream(cfg, columns)
            frames = [tail]
        else:
            frames = load_frames(
                cfg["data"], columns["time"], columns["target"], columns["known"], columns["past"], columns["series"]
            )
            layout = resolve_layout(frames, cfg)
        frame = frames[0]
        cfg.update(layout.settings())
        cfg.update(time=frame.time_name, target=frame.target_names, known=frame.known_names, past=frame.past_names)
        cfg.update(series=frame.series_name)
        if meta is not None and meta["step_unit"] != frame.step_unit:
            raise DataError(f"{frame.label}: its time step unit differs from the data the model was trained on")
        if meta is not None:
            scaling = Scaling.from_json(meta["scaling"])
        else:
            scaling = stream.scaling if stream else Scaling.fit(frames, layout)
        if stream:
            stream.scaling = scaling
        return ForecastTask(cfg, frames, layout, scaling, stream)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint stores besides the config: columns, feature sizes and covariate scaling."""
        step_features, future_features = feature_sizes(self.frame, self.layout, self.cfg["calendar"])
        return {
            "time": self.frame.time_name,
            "target": self.frame.target_names,
            "known": self.frame.known_names,
            "past": self.frame.past_names,
            "series": self.frame.series_name,
            "step_unit": self.frame.step_unit,
            "step_features": step_features,
            "future_features": future_features,
            "scaling": self.scaling.to_json(),
        }

    @staticmethod
    def build_network(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
        """The untrained network for the resolved ``cfg`` (its ``model``: the encoder architecture) and ``meta``."""
        return SeasonBlockForecaster(
            meta["step_features"],
            meta["future_features"],
            cfg["horizon"],
            len(cfg["quantiles"]),
            hidden=cfg["hidden"],
            layers=cfg["layers"],
            dropout=cfg["dropout"],
            layer_norm=cfg["layer_norm"],
            arch=check_architecture(cfg["model"]),
        )

    # ------------------------------------------------------------ training

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        """Shuffled training batches over every (target column, training origin of any series) pair (a share
        ``sample`` of them); streamed chunk by chunk with stream=true."""
        if self.stream is not None:
            yield from self.stream.batches(rng, batch)
            return
        n_targets = len(self.frame.target_names)
        origins = self.layout.train_origins
        pairs = rng.permutation(n_targets * len(origins))[: self.train_windows]
        for start in range(0, len(pairs), batch):
            chosen = pairs[start : start + batch]
            yield self.windows.batch(chosen // len(origins), origins[chosen % len(origins)])

    @property
    def train_windows(self) -> int:
        """Training windows per epoch."""
        if self.stream is not None:
            return self.stream.windows
        sample = self.cfg["sample"]
        return math.ceil(len(self.frame.target_names) * len(self.layout.train_origins) * sample)

    def steps_per_epoch(self, batch: int) -> int:
        return -(-self.train_windows // batch)

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device) -> Tensor:
        """Mean pinball loss over the quantiles, in normalised units."""
        output = net(batch["past"].to(device), batch["future"].to(device), batch["base"].to(device))
        quantiles = torch.as_tensor(self.quantiles, dtype=output.dtype, device=device)
        return pinball_loss(output, batch["target"].to(device), quantiles)

    # ------------------------------------------------------------ evaluation

    def _origins(self, split: str) -> np.ndarray:
        """The origins (S * n,) of split "val", "test" or "backtest", series after series."""
        return getattr(self.layout, f"{split}_origins")

    @torch.no_grad()
    def forecast(self, net: nn.Module, target: int, origins: np.ndarray, device: torch.device) -> np.ndarray:
        """Quantile forecasts of target column ``target`` from ``origins`` (W,) (rows of the stacked series, see
        ``Layout``): (W, H, Q) float64 in data units."""
        net.eval()
        batch = self.windows.batch(np.full(len(origins), target), origins)
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

    def _scale(self, target: int, series: int = 0) -> float:
        """The MASE scale of target column ``target`` of series ``series``: its in-sample seasonal-naive MAE."""
        if self.stream is not None:
            return self.stream.scales[target]
        frame = self.frames[series]
        return seasonal_scale(frame.targets[target, : self.layout.in_sample_end(series)], self.layout.season)

    def _baseline(self, kind: str, target: int, origins: np.ndarray) -> np.ndarray:
        """Baseline ``kind``'s quantile forecasts (W, H, Q) of target column ``target`` from held-out ``origins``
        (S * n,), series after series, each from its own series' values and in-sample errors."""
        lay, parts = self.layout, []
        for s, series_origins in enumerate(lay.per_series(origins)):
            frame = self.frames[s]
            y = frame.targets[target, : frame.n_observed]
            local = series_origins - lay.offsets[s]
            end = lay.in_sample_end(s)
            parts.append(baseline_forecast(kind, y, local, lay.horizon, lay.season, self.quantiles, end))
        return np.concatenate(parts)

    def _per_series(self, split: str, forecaster: Callable[[int, np.ndarray], np.ndarray]) -> list[dict[str, float]]:
        """The metrics of ``forecaster(target, origins) -> (W, H, Q)`` on the split's origins: one dict per series,
        averaged over the target columns."""
        origins = self._origins(split)
        n_series = len(self.frames)
        scores: list[list[dict[str, float]]] = [[] for _ in range(n_series)]
        shape = (n_series, -1, self.layout.horizon)
        for k in range(len(self.frame.target_names)):
            forecast = forecaster(k, origins).reshape(*shape, len(self.quantiles))
            actual = self.windows.actual(np.full(len(origins), k), origins).reshape(shape)
            for s in range(n_series):
                scores[s].append(forecast_metrics(actual[s], forecast[s], self.quantiles, self._scale(k, s)))
        return [_mean(per_target) for per_target in scores]

    def evaluate(self, net: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        """The model's metrics on the "val", "test" or "backtest" origins, averaged over the series and targets."""
        return _mean(self._per_series(split, lambda k, origins: self.forecast(net, k, origins, device)))

    def baseline_metrics(self, split: str) -> dict[str, dict[str, float]]:
        """Each baseline's metrics on the split's origins, under the model's metric names."""
        return {kind: _mean(self._per_series(split, partial(self._baseline, kind))) for kind in BASELINES}

    def _series_facts(self, series: int) -> dict[str, Any]:
        """The test period and origins (as times) and the MASE scales of series ``series``."""
        lay, frame = self.layout, self.frames[series]
        test = lay.per_series(lay.test_origins)[series] - lay.offsets[series]
        scales = [self._scale(k, series) for k in range(len(frame.target_names))]
        return {
            "test_period": f"{frame.time_text(int(test[0]))} .. {frame.time_text(int(test[-1]) + lay.horizon - 1)}",
            "test_origins": [frame.time_text(int(t)) for t in test],
            "mase_scale": scales[0] if len(scales) == 1 else scales,
        }

    def report(self, net: nn.Module, device: torch.device) -> dict[str, Any]:
        """metrics.json: the test, validation and rolling-origin backtest metrics of the model and of each
        baseline (means over the series and targets; with a series column also per series), and what they were
        computed on (test period, origins and MASE scale of the first series)."""
        lay = self.layout
        scores = {
            split: {
                "model": self._per_series(split, lambda k, origins: self.forecast(net, k, origins, device)),
                **{kind: self._per_series(split, partial(self._baseline, kind)) for kind in BASELINES},
            }
            for split in SPLITS
        }
        report: dict[str, Any] = {
            split: {name: _mean(per_series) for name, per_series in by_name.items()}
            for split, by_name in scores.items()
        }
        facts = self._series_facts(0)
        report.update(
            test_period=facts["test_period"],
            test_origins=facts["test_origins"],
            backtest_origins=len(lay.per_series(lay.backtest_origins)[0]),
            backtest_step=lay.backtest_step,
            horizon=lay.horizon,
            season=lay.season,
            quantiles=self.cfg["quantiles"],
            interval=f"{self.quantiles[0]:g}..{self.quantiles[-1]:g} quantiles "
            f"(nominal coverage {self.quantiles[-1] - self.quantiles[0]:.2f})",
            mase_scale=facts["mase_scale"],
            targets=self.frame.target_names,
            data=self.frame.label,
            architecture=self.cfg["model"],
            train_windows=self.train_windows,
        )
        if self.frame.series_name:
            report["series_column"] = self.frame.series_name
            report["series"] = {
                frame.series_id: {
                    **{split: {name: per[s] for name, per in scores[split].items()} for split in ("test", "backtest")},
                    **self._series_facts(s),
                }
                for s, frame in enumerate(self.frames)
            }
        return report

    @staticmethod
    def table(report: dict[str, Any]) -> str:
        """The printed test table of a ``report``: one row per model and baseline, and a line of backtest MASEs."""
        model = LABELS[report["architecture"]]
        names = [(model, "model"), *((n.replace("_", " "), n) for n in BASELINES)]
        titles = [name.upper() if name != "smape" else "sMAPE" for name in METRICS]
        series = list(report.get("series", ()))
        many = f" ({len(series)} series; period of {series[0]!r})" if series else ""
        step = f" every {report['backtest_step']} steps" if report["backtest_step"] else ""
        lines = [
            f"test: {report['data']}{many}, {len(report['test_origins'])} origins x horizon {report['horizon']}, "
            f"{report['test_period']}",
            *metric_lines([(name, report["test"][key]) for name, key in names], METRICS, titles),
            f"MASE scale: in-sample MAE of the seasonal naive (season {report['season']}); coverage of the "
            f"{report['interval']}.",
            f"rolling-origin backtest, {report['backtest_origins']} origins{step} through the test period: MASE "
            + ", ".join(f"{name} {report['backtest'][key]['mase']:.3f}" for name, key in names),
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ prediction

    def predict(self, net: nn.Module, device: torch.device) -> Forecast | SeriesForecasts:
        """Forecast the horizon after the last observed target value: a Forecast, or with a series column a
        SeriesForecasts holding one per series. When the model needs known covariates that the data lacks for
        those steps, forecast the last ``horizon`` observed steps instead (with actuals)."""
        forecasts = [self._predict_series(net, s, device) for s in range(len(self.frames))]
        if not self.frame.series_name:
            return forecasts[0]
        notes = [forecast.note for forecast in forecasts if forecast.note]
        return SeriesForecasts({forecast.series_id: forecast for forecast in forecasts}, "; ".join(notes[:1]))

    def _predict_series(self, net: nn.Module, series: int, device: torch.device) -> Forecast:
        """The forecast of ``predict`` for series ``series``."""
        frame, horizon = self.frames[series], self.layout.horizon
        origin = frame.n_observed
        note = ""
        if frame.known.shape[1] and (
            len(frame.times) < origin + horizon or not np.isfinite(frame.known[origin : origin + horizon]).all()
        ):
            origin = frame.n_observed - horizon
            where = f"{frame.title} has" if frame.series_name else "the data has"
            note = (
                f"{where} no known covariates ({', '.join(frame.known_names)}) for the {horizon} steps after "
                f"its last {frame.target_names[0]} value, so this forecasts its last {horizon} observed steps (with "
                "actuals); to forecast the future, add those rows with the covariates filled and the target empty"
            )
        if origin < self.layout.lookback:
            raise DataError(f"{frame.title}: predict needs at least {self.layout.lookback + horizon} rows")
        origins = np.array([origin + self.layout.offsets[series]])
        targets = range(len(frame.target_names))
        values = np.stack([self.forecast(net, k, origins, device)[0] for k in targets])
        actual = np.stack([self.windows.actual(np.array([k]), origins)[0] for k in targets])
        times = frame.time_at(origin + np.arange(horizon))
        return Forecast(
            frame.target_names,
            self.cfg["quantiles"],
            times,
            values,
            None if np.isnan(actual).all() else actual,
            note,
            frame.series_id if frame.series_name else None,
        )

    def example_inputs(self) -> dict[str, Tensor]:
        """Real inputs of the network (past, future, base: the test origins of the first series) for export
        checks and benchmarks."""
        origins = self.layout.per_series(self.layout.test_origins)[0]
        batch = self.windows.batch(np.zeros(len(origins), dtype=np.int64), origins)
        return {name: batch[name] for name in ("past", "future", "base")}

    def describe(self) -> str:
        """One line about the data, windows and network, printed when training starts."""
        cfg, frame = self.cfg, self.frame
        known = f", known {', '.join(frame.known_names)}" if frame.known_names else ""
        past = f", past {', '.join(frame.past_names)}" if frame.past_names else ""
        many = f", {len(self.frames)} series ({frame.series_name})" if frame.series_name else ""
        rows = self.stream.n_observed if self.stream else sum(f.n_observed for f in self.frames)
        streamed = f" per epoch, read in chunks of {self.stream.chunk_rows} rows" if self.stream else ""
        return (
            f"{frame.label}{many}, {rows} rows, target {', '.join(frame.target_names)}{known}{past}"
            f"{' + calendar' if self.windows.calendar.shape[1] else ''}; season {cfg['season']}, horizon "
            f"{cfg['horizon']}, lookback {cfg['lookback']}; {self.train_windows} training windows{streamed}, "
            f"{cfg['val_windows']} validation and {cfg['test_windows']} test origins; {LABELS[cfg['model']]} hidden "
            f"{cfg['hidden']} x "
            f"{cfg['layers']}"
        )

    def plot(self, net: nn.Module, device: torch.device, run_dir: Path) -> None:
        """forecast.png in ``run_dir``: the test forecasts (median and interval) against the actuals, first
        target column of the first series."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        origins = self.layout.per_series(self.layout.test_origins)[0]
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
        ax.set_xlabel(f"row of {self.frame.title}")
        ax.set_ylabel(self.frame.target_names[0])
        ax.set_title(f"test forecasts, {len(origins)} origins x horizon {self.layout.horizon}")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(run_dir / "forecast.png", dpi=100)
        plt.close(fig)


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over ``scores`` (one dict of METRICS per series or target)."""
    return {name: float(np.mean([m[name] for m in scores])) for name in METRICS}
