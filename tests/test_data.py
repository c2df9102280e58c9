"""The bundled datasets: shapes, columns, types, no gaps, and the loader's errors."""

from pathlib import Path

import numpy as np
import pytest

from grukit.data import bundled, load, names


def test_names():
    assert names() == ["airline", "dates", "elecdemand", "japanese_vowels", "numbers", "sunspots", "word_languages"]


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"'nope'.*airline, dates, elecdemand, japanese_vowels, numbers, sunspots"):
        load("nope")


def test_elecdemand():
    data = load("elecdemand")
    assert list(data) == ["timestamp", "demand", "workday", "temperature"]
    assert all(column.shape == (17520,) for column in data.values())
    stamps = data["timestamp"]
    assert stamps.dtype == np.dtype("datetime64[m]")
    assert stamps[0] == np.datetime64("2014-01-01T00:00")
    assert stamps[-1] == np.datetime64("2014-12-31T23:30")
    assert (np.diff(stamps) == np.timedelta64(30, "m")).all()
    for name in ("demand", "temperature"):
        assert data[name].dtype == np.float64
        assert np.isfinite(data[name]).all()
    assert data["workday"].dtype == np.int64
    assert set(np.unique(data["workday"])) == {0, 1}
    assert (data["workday"].reshape(365, 48) == data["workday"][::48, None]).all()  # one flag per day
    assert data["workday"][:48].max() == 0  # 2014-01-01, New Year's Day
    weekday = (stamps[::48].astype("datetime64[D]").astype(np.int64) + 3) % 7  # Monday = 0
    assert data["workday"][::48][weekday >= 5].max() == 0  # weekends are not work days: the labels line up
    assert 2.5 < data["demand"].min() < data["demand"].max() < 10  # GW
    assert 0 < data["temperature"].min() < data["temperature"].max() < 45  # deg C
    assert data["demand"][0] == 3.91464713 and data["temperature"][0] == 18.2


def test_airline():
    data = load("airline")
    assert list(data) == ["month", "passengers"]
    months, passengers = data["month"], data["passengers"]
    assert months.dtype == np.dtype("datetime64[M]") and passengers.dtype == np.int64
    assert len(months) == len(passengers) == 144
    assert (months == np.datetime64("1949-01") + np.arange(144)).all()
    assert passengers[:3].tolist() == [112, 118, 132] and passengers[-1] == 432
    assert passengers.sum() == 40363


def test_sunspots():
    data = load("sunspots")
    assert list(data) == ["year", "sunspots"]
    assert data["year"].dtype == np.int64 and data["sunspots"].dtype == np.float64
    assert (data["year"] == np.arange(1700, 2009)).all()
    assert np.isfinite(data["sunspots"]).all() and (data["sunspots"] >= 0).all()


def test_readme_documents_every_file():
    folder = Path(bundled.__file__).parent
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for name in names():
        file = bundled._FILES[name]
        assert (folder / file).is_file()
        assert f"`{file}`" in readme
    assert (
        sum(f.stat().st_size for f in folder.glob("*.csv*")) < 1_000_000
    )  # ARCHITECTURE: a few MB at most in all; keep well under  # bytes: keep the package small
