"""Read a Parquet file's columns as numpy arrays, typed like the bundled datasets' columns.

pyarrow is an optional dependency (``pip install 'grukit[parquet]'``); reading a Parquet file without it is a
DataError that says so. Column types: integers -> int64 (float64 with NaN when the column has nulls), floats,
decimals and booleans -> float64 (NaN for nulls), timestamps and dates -> datetime64 (NaT for nulls), text
-> object arrays of str ("" for nulls, so that text goes through the same number and time parsing as CSV).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from grukit.errors import DataError


def pyarrow_parquet(file: str) -> Any:
    """The ``pyarrow.parquet`` module; DataError naming ``file`` and the pip command when pyarrow is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{file}: reading Parquet files needs pyarrow; pip install 'grukit[parquet]' (or pip install pyarrow)"
        ) from None
    return pq


def read_parquet(path: Path) -> dict[str, np.ndarray]:
    """The columns of the Parquet file at ``path``: name -> (N,) array (see the module docstring). DataError for
    an unreadable file, no columns or rows, a duplicated column name or a column of an unsupported type."""
    pq = pyarrow_parquet(path.name)
    with _readable(path):
        table = pq.read_table(path)
    _check_names(path.name, table.column_names, table.num_rows)
    return {name: column_array(path.name, name, table.column(i)) for i, name in enumerate(table.column_names)}


def iter_parquet(path: Path, chunk_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The columns of the Parquet file at ``path``, ``chunk_rows`` rows at a time (read batch by batch, never the
    whole file), typed and checked as by ``read_parquet``."""
    pq = pyarrow_parquet(path.name)
    with _readable(path):  # no pre-buffering: pyarrow would keep every column chunk it read, the whole file
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    names = parquet.schema_arrow.names
    _check_names(path.name, names, parquet.metadata.num_rows)
    with _readable(path):
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield {name: column_array(path.name, name, batch.column(i)) for i, name in enumerate(names)}


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turns pyarrow's errors for a damaged file (ArrowInvalid, ArrowIOError, OSError, ...) and running out of
    memory into a DataError."""
    try:
        yield
    except DataError:
        raise
    except MemoryError as err:  # pyarrow's ArrowMemoryError too
        raise DataError(
            f"{path.name}: out of memory reading it ({err}); for files bigger than memory use stream=true"
        ) from None
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path.name} is not a readable Parquet file ({reason}); check or rewrite the file") from None


def _check_names(file: str, names: list[str], rows: int) -> None:
    if not names:
        raise DataError(f"{file} has no columns; it needs a time column and one row per time step")
    if rows == 0:
        raise DataError(f"{file} has columns but no data rows")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{file}: column {duplicates[0]!r} appears twice; rename one")


def column_array(file: str, name: str, column: Any) -> np.ndarray:
    """One pyarrow array or chunked array as a numpy array typed as the module docstring says."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.array(["" if v is None else v for v in column.to_pylist()], dtype=object)
    if pa.types.is_integer(kind) and column.null_count == 0:
        return column.to_numpy(zero_copy_only=False).astype(np.int64)
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean)
    if any(is_kind(kind) for is_kind in numeric):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            column = column.cast(pa.timestamp(kind.unit))  # the UTC instants
        return np.asarray(column.to_numpy(zero_copy_only=False))
    raise DataError(f"{file}: column {name!r} has Parquet type {kind}; use numbers, text, dates or timestamps")
