"""User-facing errors: each one is a single line that names what is wrong and how to fix it.

The command line prints ``grukit: <message>`` for these and exits with status 2, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class GrukitError(Exception):
    """A problem with what the user asked for (configuration, data, files), not a bug in grukit."""


class ConfigError(GrukitError, ValueError):
    """An unknown key, a bad value or an impossible combination of settings."""


class DataError(GrukitError, ValueError):
    """Data grukit cannot use: missing or misspelt columns, non-numeric values, NaNs, gaps, too few rows."""


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' with X the one of ``choices`` most similar to ``word``; '' when there are none."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.0)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
