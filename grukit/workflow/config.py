"""The one configuration of grukit: defaults from ``defaults.toml``, one parser for ``key=value`` arguments
and one validator for values from the command line and from Python.

Every key has a default in ``defaults.toml`` and a rule in ``RULES`` (a test checks that the two agree).
An unknown key or a bad value raises ``ConfigError`` naming it (with the closest valid key for a misspelt
one); the command line prints that one line and exits with status 2.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grukit.errors import ConfigError, did_you_mean
from grukit.tasks.encoders import ARCHITECTURES, check_architecture

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULTS_PATH = Path(__file__).with_name("defaults.toml")

TASKS = ("forecast", "classify", "seq2seq")
MODES = ("train", "val", "predict", "export", "benchmark", "compare")


@dataclass(frozen=True)
class Rule:
    """What one key accepts. kind: int, float, bool, str, choice, device, name, columns, quantiles, model, models."""

    kind: str
    low: float | None = None  # smallest valid number (int, float)
    high: float | None = None  # largest valid number (float)
    choices: tuple[str, ...] = ()  # choice

    def describe(self) -> str:
        """The accepted values in words, for error messages."""
        if self.kind == "int":
            return "a positive integer" if self.low == 1 else f"an integer >= {self.low:g}"
        if self.kind == "float":
            return (
                f"a number in [{self.low:g}, {self.high:g}]" if self.high is not None else f"a number >= {self.low:g}"
            )
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "device":
            return "auto, cpu, cuda or cuda:N"
        if self.kind == "name":
            return "a name without '/' or spaces, or auto"
        if self.kind == "columns":
            return "auto, or column names separated by commas"
        if self.kind == "quantiles":
            return "distinct numbers in (0, 1) separated by commas, including 0.5"
        if self.kind == "models":
            return "a comma-separated list of distinct architectures from " + ", ".join(ARCHITECTURES)
        return "text"


def _int(low: int) -> Rule:
    return Rule("int", low=low)


def _float(low: float, high: float | None = None) -> Rule:
    return Rule("float", low=low, high=high)


RULES: dict[str, Rule] = {
    "task": Rule("choice", choices=TASKS),
    "mode": Rule("choice", choices=MODES),
    "data": Rule("str"),
    "model": Rule("model"),
    "models": Rule("models"),
    "hidden": _int(1),
    "layers": _int(1),
    "dropout": _float(0.0, 0.99),
    "layer_norm": Rule("bool"),
    "epochs": _int(1),
    "patience": _int(0),
    "batch": _int(1),
    "lr": _float(0.0),
    "lr_schedule": Rule("choice", choices=("cosine", "constant")),
    "weight_decay": _float(0.0),
    "clip": _float(0.0),
    "seed": _int(0),
    "device": Rule("device"),
    "threads": _int(0),
    "devices": _int(1),
    "max_nonfinite": _int(0),
    "project": Rule("str"),
    "name": Rule("name"),
    "resume": Rule("bool"),
    "plots": Rule("bool"),
    "verbose": Rule("bool"),
    "time": Rule("str"),
    "target": Rule("columns"),
    "known": Rule("columns"),
    "past": Rule("columns"),
    "calendar": Rule("bool"),
    "season": _int(0),
    "horizon": _int(0),
    "lookback": _int(0),
    "test_windows": _int(0),
    "val_windows": _int(0),
    "stride": _int(0),
    "quantiles": Rule("quantiles"),
    "series": Rule("str"),
    "backtest": _int(0),
    "stream": Rule("bool"),
    "sample": _float(1e-6, 1.0),
    "source": Rule("str"),
    "format": Rule("choice", choices=("onnx", "torchscript")),
    "id": Rule("str"),
    "label": Rule("str"),
    "features": Rule("columns"),
    "bidirectional": Rule("bool"),
    "pool": Rule("choice", choices=("mean", "last")),
    "val_fraction": _float(0.0, 0.9),
    "test_fraction": _float(0.0, 0.9),
    "input": Rule("choice", choices=("auto", "numeric", "text", "audio")),
    "text": Rule("str"),
    "tokens": Rule("choice", choices=("char", "word")),
    "lowercase": Rule("bool"),
    "min_count": _int(1),
    "embed": _int(1),
    "max_length": _int(0),
    "sample_rate": _int(0),
    "mels": _int(1),
    "columns": Rule("columns"),
    "beam": _int(1),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@functools.lru_cache(maxsize=1)
def _defaults_file() -> dict[str, Any]:
    with DEFAULTS_PATH.open("rb") as handle:
        return tomllib.load(handle)


def defaults(task: str = "forecast") -> dict[str, Any]:
    """Every key and its default for ``task``, read from ``defaults.toml`` (a fresh dict on each call): the
    top-level keys, updated with the task's own table (``[classify]``) where the file has one."""
    values = copy.deepcopy(_defaults_file())
    tables = {name: values.pop(name) for name in TASKS if isinstance(values.get(name), dict)}
    values.update(tables.get(task, {}), task=task)
    return values


def defaults_text() -> str:
    """``defaults.toml`` as written, comments included: what ``grukit cfg`` prints."""
    return DEFAULTS_PATH.read_text(encoding="utf-8")


def _bad(key: str, value: Any, rule: Rule) -> ConfigError:
    return ConfigError(f"bad value for {key}: {value!r} is not {rule.describe()}")


def _from_text(key: str, text: str, rule: Rule) -> Any:
    """A command-line value (text) turned into the Python value the rule expects (not yet range-checked)."""
    try:
        if rule.kind == "int":
            return int(text)
        if rule.kind == "float":
            return float(text)
    except ValueError:
        raise _bad(key, text, rule) from None
    if rule.kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise _bad(key, text, rule)
    if rule.kind == "columns":
        return text if text == "auto" else [part.strip() for part in text.split(",") if part.strip()]
    if rule.kind == "models":
        return [part.strip() for part in text.split(",") if part.strip()]
    if rule.kind == "quantiles":
        try:
            return [float(part) for part in text.split(",")]
        except ValueError:
            raise _bad(key, text, rule) from None
    return text


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (bools are not) or not finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_value(key: str, value: Any) -> Any:
    """``value`` for ``key`` if valid (normalised: ints for integer keys, lists for column lists), else
    ConfigError naming the key and what it accepts. An unknown key is an error with the closest valid key."""
    if key not in RULES:
        raise ConfigError(f"unknown key {key!r}{did_you_mean(key, list(RULES))}; 'grukit cfg' lists every key")
    rule = RULES[key]
    kind = rule.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < rule.low:
            raise _bad(key, value, rule)
        return value
    if kind == "float":
        number = _finite(value)
        if number is None or number < rule.low or (rule.high is not None and number > rule.high):
            raise _bad(key, value, rule)
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(key, value, rule)
        return value
    if kind == "columns":
        if isinstance(value, str):
            return value if value == "auto" else [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
            if len(set(value)) != len(value):
                raise ConfigError(f"bad value for {key}: {list(value)!r} names a column twice")
            return list(value)
        raise _bad(key, value, rule)
    if kind == "models":
        value = _from_text(key, value, rule) if isinstance(value, str) else value
        names = isinstance(value, list | tuple) and value and all(isinstance(name, str) for name in value)
        if not names or len(set(value)) != len(value):
            raise _bad(key, value, rule)
        return [check_architecture(name, key) for name in value]
    if kind == "quantiles":
        if isinstance(value, str):
            value = _from_text(key, value, rule)
        ok = isinstance(value, list | tuple) and all(
            isinstance(q, int | float) and not isinstance(q, bool) and 0 < q < 1 for q in value
        )
        if not ok or len(set(value)) != len(value) or 0.5 not in value:
            raise _bad(key, value, rule)
        return sorted(float(q) for q in value)
    if not isinstance(value, str):
        raise _bad(key, value, rule)
    if "\0" in value:
        raise ConfigError(f"bad value for {key}: {value!r} contains a NUL character")
    if kind == "choice" and value not in rule.choices:
        raise ConfigError(f"bad value for {key}: {value!r} is not {rule.describe()}{did_you_mean(value, rule.choices)}")
    if kind == "device" and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise _bad(key, value, rule)
    if kind == "name" and (not value or re.search(r"[/\\\s\x00-\x1f\x7f]", value) or value in (".", "..")):
        raise _bad(key, value, rule)
    if kind == "model" and not checkpoint_like(value):
        check_architecture(value)
    return value


def checkpoint_like(value: str) -> bool:
    """Whether a model value names a checkpoint (a path, a .safetensors file or an existing folder), not an
    architecture (an architecture's name always means the architecture, even where a folder has that name);
    whether the file is a grukit checkpoint is checked when it is loaded."""
    if value in ARCHITECTURES:
        return False
    return "/" in value or "\\" in value or value.endswith(".safetensors") or Path(value).expanduser().exists()


def parse_args(args: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "target=a,b"]`` -> ``{"epochs": 3, "target": ["a", "b"]}``: the keys given, checked.

    Raises ConfigError for an argument without '=', an unknown key (naming the closest valid one), a key
    given twice, or a value the key does not accept.
    """
    values: dict[str, Any] = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            if key in RULES:
                raise ConfigError(f"key {key!r} needs a value, e.g. {key}={_example(key)}")
            raise ConfigError(f"expected key=value, got {arg!r}{did_you_mean(key, list(RULES))}")
        if key not in RULES:
            check_value(key, text)  # raises: unknown key
        if key in values:
            raise ConfigError(f"key {key!r} given twice")
        values[key] = check_value(key, _from_text(key, text, RULES[key]))
    return values


def _example(key: str) -> str:
    value = defaults()[key]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "a,b"
    return str(value)


def resolve(overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default: the defaults of the task in ``overrides``, else forecast's; keys it lacks: its task's
    defaults) updated with the checked ``overrides``; raises ConfigError."""
    if base is None:
        config = defaults(check_value("task", (overrides or {}).get("task", "forecast")))
    else:  # a base saved by an older grukit (a checkpoint's config) lacks keys added since: they take their defaults
        config = {**defaults(check_value("task", base.get("task", "forecast"))), **base}
    for key, value in (overrides or {}).items():
        config[key] = check_value(key, value)
    return config
