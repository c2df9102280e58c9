"""Forecast data: read a bundled dataset or a CSV file, check it, and describe it as arrays.

A forecast table has a time column, one or more target columns (each forecast as its own series by one
shared model) and optional covariates: ``known`` ones are known in the future (a temperature forecast, a
holiday flag), ``past`` ones only up to the forecast origin. Rows at the end whose targets are empty are the
future: ``predict`` forecasts them (their known covariates must be filled).

Every problem is a ``DataError`` naming the file, the column and the row (as a line number of the file) and
the fix: a missing or misspelt column (with the closest name), a non-numeric value, an empty cell or NaN,
a time column that is not increasing or has gaps, an empty or unreadable file.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grukit.data.bundled import load as load_bundled
from grukit.data.bundled import names as bundled_names
from grukit.errors import DataError, did_you_mean

DEFAULT_DATA = "elecdemand"
# The columns each bundled dataset forecasts, and its known-future covariates, when target/known are "auto".
BUNDLED_ROLES: dict[str, tuple[list[str], list[str]]] = {
    "elecdemand": (["demand"], ["temperature", "workday"]),
    "airline": (["passengers"], []),
    "sunspots": (["sunspots"], []),
}
MINUTE = 60
DAY = 24 * 60 * MINUTE


@dataclass
class Table:
    """The raw columns of a dataset. columns: name -> (N,) array (strings for CSV files, typed when bundled)."""

    label: str  # how messages name it: "data.csv" or "bundled dataset 'elecdemand'"
    columns: dict[str, np.ndarray]
    bundled: str | None  # the bundled dataset's name, None for a file
    first_line: int  # the line number of the first data row (2 for a CSV with a header), 1 for bundled data

    def where(self, row: int, column: str | None = None) -> str:
        """'data.csv line 12, column 'temperature'' for data row ``row`` (0-based)."""
        place = f"{self.label} line {row + self.first_line}" if self.bundled is None else f"{self.label} row {row}"
        return place + (f", column {column!r}" if column else "")


@dataclass
class ForecastFrame:
    """A checked forecast dataset.

    times: (N,) datetime64[s], datetime64[M] or int64, strictly increasing with a constant ``step``;
    targets: (K, N) float64, NaN only in the trailing future rows (the first ``n_observed`` rows are all finite);
    known: (N, Ck) float64, finite everywhere; past: (N, Cp) float64, finite in the observed rows.
    """

    label: str
    time_name: str
    times: np.ndarray
    step: int  # seconds (datetime64[s]), months (datetime64[M]) or units (int64)
    step_unit: str  # "s", "M" or "int"
    target_names: list[str]
    targets: np.ndarray
    known_names: list[str]
    known: np.ndarray
    past_names: list[str]
    past: np.ndarray
    n_observed: int

    def time_text(self, index: int) -> str:
        """The time of row ``index`` as text (ISO 8601 for datetimes); may be past the end (generated)."""
        return str(self.time_at(np.array([index]))[0])

    def time_at(self, index: np.ndarray) -> np.ndarray:
        """Times of rows ``index`` (any shape), extending the time grid past the last row."""
        if self.step_unit == "int":
            return self.times[0] + index.astype(np.int64) * self.step
        unit = "M" if self.step_unit == "M" else "s"
        return self.times[0] + (index.astype(np.int64) * self.step).astype(f"timedelta64[{unit}]")


# ---------------------------------------------------------------- reading


def read_table(data: str) -> Table:
    """The bundled dataset named ``data``, or the CSV file at path ``data``; DataError when neither works."""
    if data in bundled_names():
        return Table(f"bundled dataset {data!r}", load_bundled(data), data, 0)
    path = Path(data).expanduser()
    if not path.exists():
        hint = did_you_mean(data, bundled_names()) if "/" not in data and "." not in data else ""
        raise DataError(
            f"data {data!r} is not a file nor a bundled dataset{hint}; give a CSV path or one of "
            f"{', '.join(bundled_names())}"
        )
    if path.is_dir():
        raise DataError(f"data {data!r} is a folder; give a CSV file")
    if path.suffix.lower() in (".parquet", ".pq", ".xlsx", ".xls"):
        raise DataError(f"{path.name}: {path.suffix} files are not supported yet; save the table as CSV")
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not a text CSV file (not UTF-8); save it as CSV (UTF-8)") from None
    except csv.Error as err:
        raise DataError(f"{path.name} is not a readable CSV file ({err}); check its quoting") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path.name} is empty; it needs a header line and one row per time step")
    header = [cell.strip() for cell in rows[0]]
    if len(rows) == 1:
        raise DataError(f"{path.name} has a header but no data rows")
    if "" in header:
        raise DataError(f"{path.name} line 1: column {header.index('') + 1} has no name; name every column")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path.name} line 1: column {duplicates[0]!r} appears twice; rename one")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path.name} line {number}: {len(row)} fields where the header has {len(header)}; "
                "every row needs one value per column (quote values that contain commas)"
            )
    columns = {name: np.array([row[i].strip() for row in rows[1:]], dtype=object) for i, name in enumerate(header)}
    return Table(path.name, columns, None, 2)


def require_column(table: Table, name: str, role: str) -> np.ndarray:
    if name not in table.columns:
        raise DataError(
            f"{table.label} has no {role} column {name!r}{did_you_mean(name, list(table.columns))}; "
            f"columns: {', '.join(table.columns)}"
        )
    return table.columns[name]


def to_numbers(table: Table, name: str, values: np.ndarray) -> np.ndarray:
    """(N,) float64; empty cells and NaN become NaN; DataError naming the row of a non-numeric value."""
    if values.dtype != object:
        return values.astype(np.float64)
    out = np.empty(len(values), dtype=np.float64)
    for i, text in enumerate(values):
        if text == "" or text.lower() in ("na", "nan", "null", "none"):
            out[i] = np.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise DataError(
                f"{table.where(i, name)}: {text!r} is not a number; fix it or leave the cell empty"
            ) from None
        if not math.isfinite(out[i]):
            raise DataError(f"{table.where(i, name)}: {text!r} is not a finite number; fix it")
    return out


def _times(table: Table, name: str) -> tuple[np.ndarray, int, str]:
    """The time column as (N,) datetime64[s] / datetime64[M] / int64, its step and unit; DataError for
    unparsable values, times that do not increase, and gaps (a step that differs from the first one)."""
    values = table.columns[name]
    if values.dtype == object:
        try:
            times = np.array([int(v) for v in values], dtype=np.int64)
        except ValueError:
            times = None
        if times is None:
            parsed = []
            for i, text in enumerate(values):
                try:
                    parsed.append(np.datetime64(text.replace(" ", "T") if len(text) > 10 else text))
                except ValueError:
                    raise DataError(
                        f"{table.where(i, name)}: {text!r} is not a time; write times as ISO 8601 "
                        "(2014-01-31, 2014-01-31T13:30, 2014-01) or integers, or set time=COLUMN"
                    ) from None
            times = np.array(parsed)
    else:
        times = values
    if np.issubdtype(times.dtype, np.integer):
        unit, times = "int", times.astype(np.int64)
    elif np.datetime_data(times.dtype)[0] in ("Y", "M"):
        unit, times = "M", times.astype("datetime64[M]")
    else:
        unit, times = "s", times.astype("datetime64[s]")
    if len(times) < 2:
        raise DataError(f"{table.label} has one row; a forecast needs a series of many time steps")
    diffs = np.diff(times).astype(np.int64)
    step = int(diffs[0])
    bad = np.flatnonzero(diffs <= 0)
    if len(bad):
        i = int(bad[0]) + 1
        raise DataError(
            f"{table.where(i, name)}: time {values[i]} does not come after {values[i - 1]}; "
            "sort the rows by time and remove duplicate times"
        )
    bad = np.flatnonzero(diffs != step)
    if len(bad):
        i = int(bad[0]) + 1
        raise DataError(
            f"{table.where(i, name)}: time {values[i]} follows {values[i - 1]}, a step of "
            f"{_step_words(int(diffs[i - 1]), unit)} where the series steps by {_step_words(step, unit)}; "
            "add the missing rows (or resample) so that the time step is constant"
        )
    return times, step, unit


def _step_words(step: int, unit: str) -> str:
    if unit == "int":
        return str(step)
    if unit == "M":
        return f"{step} month{'s' * (step != 1)}"
    for size, word in ((DAY, "day"), (3600, "hour"), (MINUTE, "minute"), (1, "second")):
        if step % size == 0:
            count = step // size
            return f"{count} {word}{'s' * (count != 1)}"
    return f"{step} s"


def _names(setting: str | list[str], table: Table, default: list[str], role: str) -> list[str]:
    names = default if setting == "auto" else list(setting)
    for name in names:
        require_column(table, name, role)
    return names


def load_frame(
    data: str,
    time: str = "auto",
    target: str | list[str] = "auto",
    known: str | list[str] = "auto",
    past: str | list[str] = (),
) -> ForecastFrame:
    """Read and check the forecast dataset ``data`` (bundled name or CSV path); see the module docstring.

    time: the time column ("auto": the first column); target / known / past: column names ("auto": the
    bundled dataset's roles; for a CSV, target "auto" is its only numeric column besides time, known "auto"
    is none). Raises DataError naming the file, column and row, and the fix.
    """
    data = DEFAULT_DATA if data == "auto" else data
    table = read_table(data)
    names = list(table.columns)
    time_name = names[0] if time == "auto" else time
    require_column(table, time_name, "time")
    default_target, default_known = BUNDLED_ROLES.get(table.bundled or "", ([], []))
    if target == "auto" and table.bundled is None:
        numeric = [name for name in names if name != time_name and looks_numeric(table.columns[name])]
        if len(numeric) != 1:
            raise DataError(
                f"{table.label}: which column should be forecast? set target=COLUMN (one of "
                f"{', '.join(n for n in names if n != time_name)})"
            )
        default_target = numeric
    targets = _names(target, table, default_target, "target")
    known_names = _names(known, table, default_known, "known covariate")
    past_names = _names(list(past), table, [], "past covariate")
    if not targets:
        raise DataError("target is empty; name the column(s) to forecast, e.g. target=demand")
    roles = {"time": [time_name], "target": targets, "known": known_names, "past": past_names}
    seen: dict[str, str] = {}
    for role, columns in roles.items():
        for column in columns:
            if column in seen:
                raise DataError(f"column {column!r} is both {seen[column]} and {role}; give it one role")
            seen[column] = role
    times, step, unit = _times(table, time_name)
    target_values = np.stack([to_numbers(table, name, table.columns[name]) for name in targets])  # (K, N)
    observed = np.isfinite(target_values).all(axis=0)
    n_observed = int(np.flatnonzero(observed)[-1]) + 1 if observed.any() else 0
    if n_observed == 0:
        raise DataError(f"{table.label}: target column {targets[0]!r} has no values")
    for k, name in enumerate(targets):
        missing = np.flatnonzero(~np.isfinite(target_values[k, :n_observed]))
        if len(missing):
            raise DataError(
                f"{table.where(int(missing[0]), name)}: missing value (empty or NaN); fill it (e.g. interpolate) "
                "- only the rows after the last observed value (the future to forecast) may be empty"
            )
    known_values = _covariates(table, known_names, len(times), len(times))
    past_values = _covariates(table, past_names, len(times), n_observed)
    return ForecastFrame(
        label=table.label,
        time_name=time_name,
        times=times,
        step=step,
        step_unit=unit,
        target_names=targets,
        targets=target_values,
        known_names=known_names,
        known=known_values,
        past_names=past_names,
        past=past_values,
        n_observed=n_observed,
    )


def _covariates(table: Table, names: list[str], n: int, must_have: int) -> np.ndarray:
    """(n, C) float64 of the covariates ``names``; DataError for a missing value in the first ``must_have`` rows."""
    columns = []
    for name in names:
        values = to_numbers(table, name, table.columns[name])
        missing = np.flatnonzero(~np.isfinite(values[:must_have]))
        if len(missing):
            raise DataError(f"{table.where(int(missing[0]), name)}: missing value (empty or NaN); fill it")
        columns.append(values)
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0))


def looks_numeric(values: np.ndarray) -> bool:
    if values.dtype != object:
        return np.issubdtype(values.dtype, np.number)
    sample = [v for v in values[:50] if v != ""]
    try:
        [float(v) for v in sample]
    except ValueError:
        return False
    return bool(sample)


# ---------------------------------------------------------------- derived settings


def auto_season(frame: ForecastFrame) -> int:
    """Steps per season from the time step: a day for sub-daily steps (48 for 30 minutes), a week for daily
    steps, a year for weekly (52), monthly (12) and quarterly (4) steps, 1 when there is no calendar."""
    if frame.step_unit == "int":
        return 1
    if frame.step_unit == "M":
        return max(1, 12 // frame.step) if 12 % frame.step == 0 else 1
    if frame.step < DAY and DAY % frame.step == 0:
        return DAY // frame.step
    if frame.step == DAY:
        return 7
    if frame.step == 7 * DAY:
        return 52
    return 1


def calendar_features(frame: ForecastFrame, index: np.ndarray) -> np.ndarray:
    """Calendar features of rows ``index`` (M,) -> (M, C): sin/cos of the time of day and the day of week for
    sub-daily steps; of the day of week and day of year for daily steps; of the month for monthly steps;
    C = 0 for integer time. Computed from the timestamps, so they are known in the future."""
    times = frame.time_at(index)
    cycles: list[np.ndarray] = []
    if frame.step_unit == "M":
        cycles.append((times.astype(np.int64) % 12) / 12)
    elif frame.step_unit == "s":
        seconds = times.astype(np.int64)
        days = seconds // DAY
        if frame.step < DAY:
            cycles.append((seconds % DAY) / DAY)
        if frame.step < 7 * DAY:
            cycles.append(((days + 3) % 7) / 7)  # 1970-01-01 was a Thursday: Monday = 0
        if frame.step >= DAY:
            cycles.append((days % 365.25) / 365.25)
    if not cycles:
        return np.zeros((len(index), 0))
    angles = 2 * np.pi * np.stack(cycles, axis=1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
