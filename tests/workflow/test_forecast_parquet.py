"""Parquet input: the same run as from CSV, and the same checks and messages (rows counted from 0)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from grukit.cli import main
from grukit.errors import DataError
from grukit.tasks.forecast.data import load_frame
from tests.workflow.forecast_files import small_args, write_hourly_csv


def test_parquet_trains_and_predicts_like_the_csv(tmp_path, monkeypatch):
    csv_path = write_hourly_csv(tmp_path / "hourly.csv", days=20, future_hours=24)
    table = pa_csv.read_csv(csv_path)
    assert pa.types.is_timestamp(table.schema.field("time").type)  # typed columns, not text
    pq.write_table(table, tmp_path / "hourly.parquet", row_group_size=100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")
    runs = tmp_path / "runs" / "forecast"
    for name in ("csv", "parquet"):
        assert main(["forecast", "train", f"data=hourly.{name}", f"name={name}", *small_args(epochs=1)]) == 0
        assert main(["forecast", "predict", f"model=runs/forecast/{name}", f"name={name}_predict"]) == 0
    from_csv, from_parquet = (json.loads((runs / name / "metrics.json").read_text()) for name in ("csv", "parquet"))
    assert from_parquet["data"] == "hourly.parquet"
    for split in ("test", "backtest"):  # the same numbers, so the same run
        assert from_parquet[split] == from_csv[split]
    assert from_parquet["test_origins"] == from_csv["test_origins"]
    with open(runs / "parquet_predict" / "predictions.csv") as a, open(runs / "csv_predict" / "predictions.csv") as b:
        rows, expected = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert rows == expected and len(rows) == 24 and rows[0]["time"] == "2024-01-21T00:00:00"


def hours(n: int, skip: int | None = None) -> list:
    start = np.datetime64("2024-01-01T00:00", "s")
    return [start + np.timedelta64(h, "h") for h in range(n + (skip is not None)) if h != skip]


def write(tmp_path, columns: dict) -> str:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize(
    ("columns", "kwargs", "message"),
    [
        ({"time": hours(3), "load": [1.0, 2, 3]}, {"target": ["lod"]}, "data.parquet has no target column 'lod' (did "),
        (
            {"time": hours(3), "load": ["1", "2", "abc"]},
            {"target": ["load"]},
            "data.parquet row 2, column 'load': 'abc' is not a number",
        ),
        (
            {"time": hours(3), "load": [1.0, None, 3], "temp": [1.0, 2, 3]},
            {"target": ["load"]},
            "data.parquet row 1, column 'load': missing value (empty or NaN); fill it",
        ),
        (
            {"time": hours(3), "load": [1.0, 2, 3], "temp": [1.0, float("nan"), 3]},
            {"target": ["load"], "known": ["temp"]},
            "data.parquet row 1, column 'temp': missing value",
        ),
        (
            {"time": hours(3, skip=2), "load": [1.0, 2, 3]},
            {},
            "data.parquet row 2, column 'time': time 2024-01-01T03:00:00 follows 2024-01-01T01:00:00, a step of "
            "2 hours where the series steps by 1 hour; add the missing rows",
        ),
        (
            {"time": hours(3)[::-1], "load": [1.0, 2, 3]},
            {},
            "data.parquet row 1, column 'time': time 2024-01-01T01:00:00 does not come after 2024-01-01T02:00:00",
        ),
        ({"time": [*hours(2), None], "load": [1.0, 2, 3]}, {}, "data.parquet row 2, column 'time': missing time"),
        ({"time": ["2024-01-01", "soon"], "load": [1, 2]}, {}, "data.parquet row 1, column 'time': 'soon' is not a"),
        ({"time": [1.5, 2.5], "load": [1, 2]}, {}, "time column 'time' holds float64 numbers; write times as ISO"),
        ({"time": [1, 2], "load": [[1], [2]]}, {"target": ["load"]}, "column 'load' has Parquet type list<"),
        ({"time": pa.array([], pa.int64()), "load": pa.array([], pa.float64())}, {}, "has columns but no data rows"),
    ],
)
def test_bad_parquet(tmp_path, columns, kwargs, message):
    with pytest.raises(DataError) as err:
        load_frame(write(tmp_path, columns), **kwargs)
    assert message in str(err.value)


def test_typed_parquet_columns_are_read_as_such(tmp_path):
    columns = {"day": pa.array(np.arange(20).astype("datetime64[D]")), "y": pa.array(np.arange(20), pa.int32())}
    frame = load_frame(write(tmp_path, columns))
    assert frame.step == 86400 and frame.step_unit == "s" and frame.targets.dtype == np.float64
    months = pa.array(np.arange(24).astype("datetime64[M]").astype("datetime64[D]"))
    frame = load_frame(write(tmp_path, {"month": months, "y": np.ones(24)}))
    assert (frame.step_unit, frame.step, frame.time_text(24)) == ("M", 1, "1972-01")  # month starts are months


def test_unreadable_parquet_and_missing_pyarrow(tmp_path, monkeypatch):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DataError, match=r"^broken.parquet is not a readable Parquet file \(.*\); check or rewrite"):
        load_frame(str(path))
    good = write(tmp_path, {"time": [1, 2, 3], "load": [1.0, 2, 3]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError) as err:
        load_frame(good)
    assert str(err.value) == (
        "data.parquet: reading Parquet files needs pyarrow; pip install 'grukit[parquet]' (or pip install pyarrow)"
    )
