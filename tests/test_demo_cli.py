"""The demo and the ``grukit`` command line, end to end through ``python -m grukit``."""

import os
import re
import subprocess
import sys

import pytest

from grukit import __version__
from grukit.cli import main, parse_demo_args
from grukit.demo import run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def grukit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grukit", *args], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )


def table(stdout: str) -> dict[str, list[float]]:
    """The demo's printed rows: model name -> [MAE, RMSE, MASE]."""
    rows = re.findall(r"^(.+?)\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+(\d+\.\d{3})$", stdout, re.MULTILINE)
    return {name: [float(v) for v in values] for name, *values in rows}


def test_demo_end_to_end():
    result = grukit("demo", "epochs=1", "hidden=16")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert list(rows) == ["naive (last value)", "seasonal naive (previous day)", "GRU (hidden 16)"]
    assert rows["seasonal naive (previous day)"] == pytest.approx([0.303, 0.429, 0.819], abs=1e-3)
    assert rows["naive (last value)"] == pytest.approx([0.442, 0.550, 1.195], abs=1e-3)
    assert "perfect temperature forecast" in result.stdout
    assert "grukit.nn.gru.GRU: 1 epoch, seed 0" in result.stdout
    assert "on 1 torch thread;" in result.stdout  # OMP_NUM_THREADS=1 is honoured


def test_run_returns_the_printed_metrics(capsys):
    result = run(epochs=1, seed=3, hidden=8, threads=1)
    printed = table(capsys.readouterr().out)
    for key, name in [("naive", "naive (last value)"), ("gru", "GRU (hidden 8)")]:
        metrics = result[key]
        assert printed[name] == pytest.approx([metrics["mae"], metrics["rmse"], metrics["mase"]], abs=6e-4)
    assert result["gru"]["mase"] == pytest.approx(result["gru"]["mae"] / result["mase_scale"])
    assert result["test_windows"] == 14
    assert result["test_period"] == "2014-12-18T00:00 .. 2014-12-31T23:30"
    assert (result["epochs"], result["seed"], result["hidden"], result["threads"]) == (1, 3, 8, 1)


def test_version():
    result = grukit("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"grukit {__version__} (torch ")


def test_help():
    result = grukit("help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: grukit COMMAND")
    assert all(command in result.stdout for command in ("demo", "version", "help", "epochs=", "hidden="))


def test_dash_dash_help_in_process(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: grukit COMMAND")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "epoch=3"], "grukit: demo: unknown key 'epoch' (did you mean 'epochs'?)"),
        (["demo", "hiden=8"], "grukit: demo: unknown key 'hiden' (did you mean 'hidden'?)"),
        (["demo", "epochs=three"], "grukit: demo: bad value for epochs: 'three' is not a positive integer"),
        (["demo", "hidden=0"], "grukit: demo: bad value for hidden: '0' is not a positive integer"),
        (["demo", "seed=-1"], "grukit: demo: bad value for seed: '-1' is not an integer >= 0"),
        (["demo", "epochs"], "grukit: demo: key 'epochs' needs a value, e.g. epochs=5"),
        (["dmeo"], "grukit: unknown command 'dmeo' (did you mean 'demo'?)"),
        ([], "grukit: no command given"),
    ],
)
def test_usage_errors_in_process(capsys, args, message):
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "epoch=3"], "unknown key 'epoch' (did you mean 'epochs'?)"),
        (["demo", "epochs=abc"], "bad value for epochs: 'abc' is not a positive integer"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args, message):
    result = grukit(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_parse_demo_args_defaults_and_values():
    assert parse_demo_args([]) == {"epochs": 5, "seed": 0, "hidden": 64, "threads": None}
    assert parse_demo_args(["seed=7", "threads=2", "epochs=1"]) == {"epochs": 1, "seed": 7, "hidden": 64, "threads": 2}
