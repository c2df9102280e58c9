"""The ``grukit`` command line's top level: version, help, cfg, and the ``demo`` alias of ``forecast train``.

The forecast task itself is tested end to end in tests/workflow/.
"""

import os
import subprocess
import sys

import pytest

from grukit import __version__
from grukit.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def grukit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grukit", *args], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )


def test_version():
    result = grukit("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"grukit {__version__} (torch ")


def test_help():
    result = grukit("help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: grukit TASK MODE")
    assert all(word in result.stdout for word in ("forecast", "train", "val", "predict", "export", "cfg", "version"))


def test_dash_dash_help_in_process(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: grukit TASK MODE")


def test_checks_in_process(capsys):
    assert main(["checks"]) == 0
    out = capsys.readouterr().out
    assert "safetensors: installed" in out and "torch threads:" in out
    assert "backend reference: ready" in out  # every registered backend is loaded and reported
    assert "backend cpu:" in out and "backend triton:" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "epoch=3"], "grukit: unknown key 'epoch' (did you mean 'epochs'?)"),
        (["demo", "epochs=three"], "grukit: bad value for epochs: 'three' is not a positive integer"),
        (["dmeo"], "grukit: unknown command 'dmeo' (did you mean 'demo'?)"),
        (["version", "x"], "grukit: version takes no arguments"),
        ([], "grukit: no command given"),
    ],
)
def test_usage_errors_in_process(capsys, args, message):
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_usage_errors_exit_2_without_traceback():
    result = grukit("forecast", "train", "epoch=3")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "grukit: unknown key 'epoch' (did you mean 'epochs'?); 'grukit cfg' lists every key\n"
