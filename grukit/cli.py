"""The ``grukit`` command: ``grukit demo [key=value ...]``, ``grukit version``, ``grukit help``.

Arguments are ``key=value`` pairs. A usage error (unknown command or key, a bad value) prints one line to
stderr and exits with status 2, never a traceback.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

import torch

from grukit import __version__
from grukit.demo import run

USAGE = """usage: grukit COMMAND [key=value ...]

commands:
  demo      train a small GRU forecaster on the bundled electricity demand data and compare it with
            naive baselines on the last 14 days (MAE, RMSE, MASE); about 15 s on one core
            keys: epochs=5 seed=0 hidden=64 threads=N (default: OMP_NUM_THREADS, else 1)
  version   print the grukit and torch versions
  help      print this message

example: grukit demo epochs=3 seed=1"""

# key -> (default, smallest valid value); every value is an integer.
DEMO_KEYS: dict[str, tuple[int | None, int]] = {
    "epochs": (5, 1),
    "seed": (0, 0),
    "hidden": (64, 1),
    "threads": (None, 1),
}


class UsageError(Exception):
    """A command line grukit cannot run; the message is the one line printed on stderr."""


def _closest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' with X the one of ``choices`` most similar to ``word`` (difflib's ratio)."""
    return f" (did you mean {difflib.get_close_matches(word, choices, n=1, cutoff=0.0)[0]!r}?)"


def parse_demo_args(args: Sequence[str]) -> dict[str, int | None]:
    """``["epochs=3", "seed=1"]`` -> the keyword arguments of ``grukit.demo.run``, defaults filled in.

    Raises UsageError naming the key: for an argument without '=', an unknown key (with the closest valid
    key), a repeated key, or a value that is not an integer in range.
    """
    values: dict[str, int | None] = {key: default for key, (default, _) in DEMO_KEYS.items()}
    seen: set[str] = set()
    valid = ", ".join(DEMO_KEYS)
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep and key in DEMO_KEYS:
            default, smallest = DEMO_KEYS[key]
            raise UsageError(f"demo: key {key!r} needs a value, e.g. {key}={smallest if default is None else default}")
        if not sep:
            raise UsageError(f"demo: expected key=value, got {arg!r}; keys: {valid}")
        if key not in DEMO_KEYS:
            raise UsageError(f"demo: unknown key {key!r}{_closest(key, list(DEMO_KEYS))}; keys: {valid}")
        if key in seen:
            raise UsageError(f"demo: key {key!r} given twice")
        seen.add(key)
        smallest = DEMO_KEYS[key][1]
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or number < smallest:
            expected = "a positive integer" if smallest == 1 else f"an integer >= {smallest}"
            raise UsageError(f"demo: bad value for {key}: {text!r} is not {expected}")
        values[key] = number
    return values


def _demo(args: Sequence[str]) -> int:
    run(**parse_demo_args(args))
    return 0


def _version(args: Sequence[str]) -> int:
    if args:
        raise UsageError(f"version takes no arguments, got {' '.join(args)!r}")
    print(f"grukit {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    return 0


def _help(args: Sequence[str]) -> int:
    print(USAGE)
    return 0


COMMANDS = {"demo": _demo, "version": _version, "help": _help}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grukit command line. argv: the arguments after the program name (default: sys.argv[1:]).

    Returns the exit status: 0 on success, 2 on a usage error (one line on stderr).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command in ("-h", "--help"):
        command = "help"
    try:
        if not command:
            raise UsageError("no command given; try 'grukit help'")
        if command not in COMMANDS:
            raise UsageError(
                f"unknown command {command!r}{_closest(command, list(COMMANDS))}; commands: demo, version, help"
            )
        return COMMANDS[command](rest)
    except UsageError as err:
        print(f"grukit: {err}", file=sys.stderr)
        return 2
