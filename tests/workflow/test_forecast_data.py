"""Bad forecast data: one clear error naming the file, column and row, and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grukit.cli import main
from grukit.errors import DataError
from grukit.tasks.forecast.data import auto_season, load_frame
from grukit.tasks.forecast.task import ForecastTask
from grukit.workflow.config import resolve
from tests.workflow.forecast_files import small_args, write_hourly_csv

HEADER = "time,load,temp\n"


def rows(n: int, start: int = 0) -> str:
    return "".join(f"2024-01-01T{h:02d}:00,{10 + h},{20 + h}\n" for h in range(start, start + n))


def csv_file(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "data.csv is empty"),
        (HEADER, {}, "data.csv has a header but no data rows"),
        (HEADER + rows(3), {"target": ["lod"]}, "data.csv has no target column 'lod' (did you mean 'load'?)"),
        (
            HEADER + rows(3),
            {"target": ["load"], "known": ["tmp"]},
            "no known covariate column 'tmp' (did you mean 'temp'?)",
        ),
        (HEADER + rows(3), {"time": "tim"}, "no time column 'tim' (did you mean 'time'?)"),
        (HEADER + rows(3), {}, "which column should be forecast? set target=COLUMN (one of load, temp)"),
        (
            HEADER + rows(2) + "2024-01-01T02:00,abc,22\n",
            {"target": ["load"]},
            "data.csv line 4, column 'load': 'abc' is not a number",
        ),
        (
            HEADER + rows(2) + "2024-01-01T02:00,,22\n" + rows(2, 3),
            {"target": ["load"]},
            "data.csv line 4, column 'load': missing value (empty or NaN); fill it",
        ),
        (
            HEADER + rows(2) + "2024-01-01T02:00,12,NaN\n" + rows(2, 3),
            {"target": ["load"], "known": ["temp"]},
            "data.csv line 4, column 'temp': missing value",
        ),
        (
            HEADER + rows(2) + rows(2, 3),
            {"target": ["load"]},
            "data.csv line 4, column 'time': time 2024-01-01T03:00 follows 2024-01-01T01:00, a step of 2 hours "
            "where the series steps by 1 hour; add the missing rows",
        ),
        (
            HEADER + rows(3) + rows(1, 1),
            {"target": ["load"]},
            "data.csv line 5, column 'time': time 2024-01-01T01:00 does not come after 2024-01-01T02:00; sort the rows",
        ),
        (
            HEADER + "yesterday,1,2\ntoday,2,3\n",
            {"target": ["load"]},
            "data.csv line 2, column 'time': 'yesterday' is not a time",
        ),
        (
            HEADER + rows(2) + "2024-01-01T02:00,12\n",
            {"target": ["load"]},
            "data.csv line 4: 2 fields where the header has 3",
        ),
        ("time,load,load\n" + rows(2), {}, "column 'load' appears twice"),
        (HEADER + rows(3), {"target": ["load"], "known": ["load"]}, "column 'load' is both target and known"),
    ],
)
def test_bad_csv(tmp_path, text, kwargs, message):
    with pytest.raises(DataError) as err:
        load_frame(csv_file(tmp_path, text), **kwargs)
    assert message in str(err.value)


def test_binary_and_unsupported_files(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not a text CSV file"):
        load_frame(str(path))
    with pytest.raises(DataError, match=r"\.xlsx files are not supported; save the table as CSV or Parquet"):
        load_frame(csv_file(tmp_path, "x", "data.xlsx"))
    with pytest.raises(DataError, match="is a folder"):
        load_frame(str(tmp_path))


def test_series_too_short_names_the_keys_to_lower(tmp_path):
    path = write_hourly_csv(tmp_path / "short.csv", days=5)
    cfg = resolve({"data": str(path), "target": "load", "known": "temp", "lookback": 72, "test_windows": 2})
    with pytest.raises(DataError) as err:
        ForecastTask.prepare(cfg)
    message = str(err.value)
    assert "short.csv: 120 observed rows are too few for lookback 72 + horizon 24" in message
    assert "lower lookback=, horizon=, val_windows= or test_windows=" in message


def test_good_csv_with_future_rows(tmp_path):
    path = write_hourly_csv(tmp_path / "ok.csv", days=10, future_hours=24)
    frame = load_frame(str(path), target=["load"], known=["temp"])
    assert frame.n_observed == 240 and frame.targets.shape == (1, 264) and np.isnan(frame.targets[0, 240:]).all()
    assert frame.step == 3600 and auto_season(frame) == 24 and frame.known_names == ["temp"]


def test_bundled_defaults_and_layout():
    task = ForecastTask.prepare(resolve())
    assert task.frame.target_names == ["demand"] and task.frame.known_names == ["temperature", "workday"]
    assert (task.cfg["season"], task.cfg["horizon"], task.cfg["lookback"]) == (48, 48, 336)
    assert task.frame.time_text(int(task.layout.test_origins[0])) == "2014-12-18T00:00:00"
    assert len(task.layout.test_origins) == 14 and all(t % 48 == 0 for t in task.layout.test_origins)
    assert task.layout.train_origins[-1] + 48 <= task.layout.val_origins[0]  # no training target in validation
    assert task.layout.val_origins[-1] + 48 <= task.layout.test_origins[0]


def test_bad_data_from_the_command_line(tmp_path, monkeypatch, capsys):
    csv = write_hourly_csv(tmp_path / "d.csv", days=10)
    text = csv.read_text().splitlines()
    text[7] = text[7].replace(",x", ",x").split(",")[0] + ",oops," + text[7].split(",")[2] + ",x"
    csv.write_text("\n".join(text) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["forecast", "train", f"data={csv}", *small_args()]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "grukit: d.csv line 8, column 'load': 'oops' is not a number; fix it or leave the cell empty\n"
    assert not (tmp_path / "runs").exists()
