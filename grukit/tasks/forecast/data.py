"""Forecast data: read a bundled dataset, a CSV or a Parquet file, check it, and describe it as arrays.

A forecast table has a time column, one or more target columns (each forecast as its own series by one
shared model) and optional covariates: ``known`` ones are known in the future (a temperature forecast, a
holiday flag), ``past`` ones only up to the forecast origin. Rows at the end whose targets are empty are the
future: ``predict`` forecasts them (their known covariates must be filled). With a ``series`` column the
table holds several series stacked (long format: the rows of each id in time order); each id is checked on
its own and becomes one ``ForecastFrame``.

Every problem is a ``DataError`` naming the file, the column and the row (a line number of a CSV file, a
0-based row of a Parquet file) and the fix: a missing or misspelt column (with the closest name), a
non-numeric value, an empty cell or NaN, a time column that is not increasing or has gaps, an empty or
unreadable file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grukit.data.bundled import load as load_bundled
from grukit.data.bundled import names as bundled_names
from grukit.errors import DataError, did_you_mean
from grukit.tasks.forecast.parquet import read_parquet

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
    """The raw columns of a dataset. columns: name -> (N,) array (strings for CSV files, typed when bundled or
    read from Parquet)."""

    label: str  # how messages name it: "data.csv" or "bundled dataset 'elecdemand'"
    columns: dict[str, np.ndarray]
    bundled: str | None  # the bundled dataset's name, None for a file
    first_line: int  # the line number of the first data row (2 for a CSV with a header), 0 for 0-based rows
    row_word: str = "line"  # how messages count rows: "line" (of a CSV file) or "row" (0-based data rows)

    def where(self, row: int, column: str | None = None) -> str:
        """'data.csv line 12, column 'temperature'' for data row ``row`` (0-based)."""
        return f"{self.label} {self.row_word} {row + self.first_line}" + (f", column {column!r}" if column else "")


@dataclass
class ForecastFrame:
    """One checked series (of a dataset with a series column: the rows of one id).

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
    series_name: str = ""  # the series id column ("": the dataset is one series)
    series_id: str = ""  # this series' id in that column

    @property
    def title(self) -> str:
        """How messages name this series: "data.csv", or "data.csv series 'store_2'" for one of many."""
        return f"{self.label} series {self.series_id!r}" if self.series_name else self.label

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


PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(data: str) -> Table:
    """The bundled dataset named ``data``, or the CSV or Parquet (.parquet, .pq) file at path ``data``; DataError
    when neither works."""
    if data in bundled_names():
        return Table(f"bundled dataset {data!r}", load_bundled(data), data, 0, "row")
    path = Path(data).expanduser()
    if not path.exists():
        hint = did_you_mean(data, bundled_names()) if "/" not in data and "." not in data else ""
        raise DataError(
            f"data {data!r} is not a file nor a bundled dataset{hint}; give a CSV or Parquet path or one of "
            f"{', '.join(bundled_names())}"
        )
    if path.is_dir():
        raise DataError(f"data {data!r} is a folder; give a CSV or Parquet file")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return Table(path.name, read_parquet(path), None, 0, "row")
    if path.suffix.lower() in (".xlsx", ".xls"):
        raise DataError(f"{path.name}: {path.suffix} files are not supported; save the table as CSV or Parquet")
    return next(csv_tables(path))


def csv_tables(path: Path, chunk_rows: int = 0) -> Iterator[Table]:
    """The CSV (tab-separated for .tsv, .tab) file at ``path`` as Tables of ``chunk_rows`` data rows each, read
    as it goes (0: one Table of every row). Blank lines are skipped. DataError for a file that is not UTF-8 text
    or not CSV, empty, without data rows, with a nameless or repeated column or a row of another width."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            rows = (row for row in csv.reader(handle, delimiter=delimiter) if any(cell.strip() for cell in row))
            header = [cell.strip() for cell in next(rows, [])]
            if not header:
                raise DataError(f"{path.name} is empty; it needs a header line and one row per time step")
            if "" in header:
                raise DataError(f"{path.name} line 1: column {header.index('') + 1} has no name; name every column")
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise DataError(f"{path.name} line 1: column {duplicates[0]!r} appears twice; rename one")
            chunk: list[list[str]] = []
            first = 0  # data rows before this chunk
            for row in rows:
                if len(row) != len(header):
                    raise DataError(
                        f"{path.name} line {first + len(chunk) + 2}: {len(row)} fields where the header has "
                        f"{len(header)}; every row needs one value per column (quote values that contain commas)"
                    )
                chunk.append(row)
                if len(chunk) == chunk_rows:
                    yield _csv_table(path.name, header, chunk, first)
                    first, chunk = first + len(chunk), []
            if chunk:
                yield _csv_table(path.name, header, chunk, first)
            elif first == 0:
                raise DataError(f"{path.name} has a header but no data rows")
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not a text CSV file (not UTF-8); save it as CSV (UTF-8)") from None
    except csv.Error as err:
        raise DataError(f"{path.name} is not a readable CSV file ({err}); check its quoting") from None


def _csv_table(file: str, header: list[str], rows: list[list[str]], first: int) -> Table:
    """The Table of CSV data rows ``rows`` (of text cells), the file's data rows ``first`` onwards."""
    columns = {name: np.array([row[i].strip() for row in rows], dtype=object) for i, name in enumerate(header)}
    return Table(file, columns, None, 2 + first)


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


def _parse_times(table: Table, name: str) -> tuple[np.ndarray, str]:
    """The time column as (N,) datetime64[s], datetime64[M] or int64 and its unit ("s", "M" or "int"); times
    that are all on the first of a month at midnight are months. DataError naming the row of a value that is not
    a time or is missing."""
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
        return times.astype(np.int64), "int"
    missing = np.flatnonzero(np.isnat(times) if np.issubdtype(times.dtype, np.datetime64) else ~np.isfinite(times))
    if len(missing):
        raise DataError(f"{table.where(int(missing[0]), name)}: missing time; every row needs its time")
    if not np.issubdtype(times.dtype, np.datetime64):
        raise DataError(
            f"{table.label}: time column {name!r} holds {times.dtype} numbers; write times as ISO 8601 or integers"
        )
    months = times.astype("datetime64[M]")
    if np.datetime_data(times.dtype)[0] in ("Y", "M") or (months.astype(times.dtype) == times).all():
        return months, "M"  # months (2014-01), or dates that are all on the first of a month
    return times.astype("datetime64[s]"), "s"


def _check_steps(table: Table, name: str, times: np.ndarray, rows: np.ndarray, unit: str, title: str) -> int:
    """The constant step of one series' ``times`` (n,), the table's rows ``rows`` (n,); DataError naming the row
    for times that do not increase and for gaps (a step that differs from the first one)."""
    written = table.columns[name]
    values = written[rows] if written.dtype == object else times  # text as the file has it, else parsed times
    if len(times) < 2:
        raise DataError(f"{title} has one row; a forecast needs a series of many time steps")
    diffs = np.diff(times).astype(np.int64)
    step = int(diffs[0])
    bad = np.flatnonzero(diffs <= 0)
    if len(bad):
        i = bad[0] + 1
        raise DataError(
            f"{table.where(rows[i], name)}: time {values[i]} does not come after {values[i - 1]}; "
            "sort the rows by time and remove duplicate times"
        )
    bad = np.flatnonzero(diffs != step)
    if len(bad):
        i = bad[0] + 1
        raise DataError(
            f"{table.where(rows[i], name)}: time {values[i]} follows {values[i - 1]}, a step of "
            f"{_step_words(int(diffs[bad[0]]), unit)} where the series steps by {_step_words(step, unit)}; "
            "add the missing rows (or resample) so that the time step is constant"
        )
    return step


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
    """The one series of ``data`` (no series column); see ``load_frames``."""
    return load_frames(data, time, target, known, past)[0]


def load_frames(
    data: str,
    time: str = "auto",
    target: str | list[str] = "auto",
    known: str | list[str] = "auto",
    past: str | list[str] = (),
    series: str = "",
) -> list[ForecastFrame]:
    """Read and check the forecast dataset ``data`` (bundled name, CSV or Parquet path): one frame per series.

    time: the time column ("auto": the first column but the series column); target / known / past: column
    names ("auto": the bundled dataset's roles; for a file, target "auto" is its only numeric column besides
    time and series, known "auto" is none); series: the series id column ("": one series), ids in order of
    first appearance. Every series must have the same time step. Raises DataError naming the file, column and
    row, and the fix.
    """
    table = read_table(DEFAULT_DATA if data == "auto" else data)
    return table_frames(table, time, target, known, past, series)


def table_frames(
    table: Table,
    time: str = "auto",
    target: str | list[str] = "auto",
    known: str | list[str] = "auto",
    past: str | list[str] = (),
    series: str = "",
) -> list[ForecastFrame]:
    """The checked series of ``table``; the arguments and errors are those of ``load_frames``."""
    names = list(table.columns)
    if series:
        require_column(table, series, "series id")
    time_name = next(name for name in [*names, ""] if name != series) if time == "auto" else time
    require_column(table, time_name, "time")
    default_target, default_known = BUNDLED_ROLES.get(table.bundled or "", ([], []))
    if target == "auto" and table.bundled is None:
        others = [name for name in names if name not in (time_name, series)]
        numeric = [name for name in others if looks_numeric(table.columns[name])]
        if len(numeric) != 1:
            raise DataError(
                f"{table.label}: which column should be forecast? set target=COLUMN (one of {', '.join(others)})"
            )
        default_target = numeric
    targets = _names(target, table, default_target, "target")
    known_names = _names(known, table, default_known, "known covariate")
    past_names = _names(list(past), table, [], "past covariate")
    if not targets:
        raise DataError("target is empty; name the column(s) to forecast, e.g. target=demand")
    roles = {"time": [time_name], "series": [series] if series else [], "target": targets}
    roles.update(known=known_names, past=past_names)
    seen: dict[str, str] = {}
    for role, columns in roles.items():
        for column in columns:
            if column in seen:
                raise DataError(f"column {column!r} is both {seen[column]} and {role}; give it one role")
            seen[column] = role
    times, unit = _parse_times(table, time_name)
    values = {name: to_numbers(table, name, table.columns[name]) for name in [*targets, *known_names, *past_names]}
    frames = []
    for series_id, rows in _series_rows(table, series):
        frame = ForecastFrame(
            label=table.label,
            time_name=time_name,
            times=times[rows],
            step=0,
            step_unit=unit,
            target_names=targets,
            targets=np.stack([values[name][rows] for name in targets]),
            known_names=known_names,
            known=_stack([values[name][rows] for name in known_names], len(rows)),
            past_names=past_names,
            past=_stack([values[name][rows] for name in past_names], len(rows)),
            n_observed=0,
            series_name=series,
            series_id=series_id,
        )
        frame.step = _check_steps(table, time_name, frame.times, rows, unit, frame.title)
        frame.n_observed = _check_missing(table, frame, rows)
        if frames and frame.step != frames[0].step:
            raise DataError(
                f"{frame.title} steps by {_step_words(frame.step, unit)} where series {frames[0].series_id!r} steps "
                f"by {_step_words(frames[0].step, unit)}; every series needs the same time step (resample)"
            )
        frames.append(frame)
    return frames


def _series_rows(table: Table, series: str) -> list[tuple[str, np.ndarray]]:
    """(id, its table rows (n,)) for each id of column ``series`` in order of first appearance; one ("", every
    row) when ``series`` is empty. DataError naming the row of an empty id."""
    n = len(next(iter(table.columns.values())))
    if not series:
        return [("", np.arange(n))]
    ids = np.array([str(v).strip() for v in table.columns[series]], dtype=object)
    empty = np.flatnonzero((ids == "") | (ids == "nan") | (ids == "NaT"))
    if len(empty):
        raise DataError(f"{table.where(int(empty[0]), series)}: empty series id; give every row its series id")
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(unique)))
    groups = np.split(rows, bounds[:-1])
    return [(str(unique[u]), groups[u]) for u in order]


def _check_missing(table: Table, frame: ForecastFrame, rows: np.ndarray) -> int:
    """The number of observed rows of ``frame`` (the table's ``rows``): up to its last row with every target;
    DataError naming the row of a missing target or past covariate before it, or of any missing known one."""
    observed = np.isfinite(frame.targets).all(axis=0)
    n_observed = int(np.flatnonzero(observed)[-1]) + 1 if observed.any() else 0
    if n_observed == 0:
        raise DataError(f"{frame.title}: target column {frame.target_names[0]!r} has no values")
    future = " (e.g. interpolate) - only the rows after the last observed value (the future to forecast) may be empty"
    checks = [
        (frame.targets.T, frame.target_names, n_observed, future),
        (frame.known, frame.known_names, len(rows), ""),
        (frame.past, frame.past_names, n_observed, ""),
    ]
    for columns, names, must_have, hint in checks:
        for c, name in enumerate(names):
            missing = np.flatnonzero(~np.isfinite(columns[:must_have, c]))
            if len(missing):
                raise DataError(f"{table.where(rows[missing[0]], name)}: missing value (empty or NaN); fill it{hint}")
    return n_observed


def _stack(columns: list[np.ndarray], n: int) -> np.ndarray:
    """Columns (n,) each -> (n, C); (n, 0) when there are none."""
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
