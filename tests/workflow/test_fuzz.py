"""Property-based fuzzing of everything that reads user input: the key=value parser, config validation, the
forecast and classify file loaders and the checkpoint loader. Malformed input always gives a GrukitError (one
line for the user), never another exception; and a training run that fails on its input leaves no run folder.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import tempfile
import wave
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import grukit
from grukit.errors import DataError, GrukitError
from grukit.tasks.classify.audio import read_wav
from grukit.tasks.classify.data import load_sequences
from grukit.tasks.classify.text import load_texts
from grukit.tasks.forecast.data import load_frame
from grukit.tasks.seq2seq.data import load_pairs
from grukit.workflow.checkpoints import load_checkpoint, save_checkpoint
from grukit.workflow.config import RULES, check_value, parse_args, resolve

KEYS = sorted(RULES)
TOKENS = [
    "", " ", "auto", "0", "-1", "1", "3", "0.5", "1e309", "nan", "inf", "-inf", "true", "no", "a,b", ",", "0.1,0.5,0.9",
    "cpu", "cuda:7", "gru", "x.safetensors", "~nobody/x", "a/b", "..", "\0", "\n", "é",
]
text = st.one_of(st.sampled_from(TOKENS), st.text(max_size=12))
values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True), text,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=6,
)  # fmt: skip


def clear_error(call, *args, **kwargs):
    """``call(*args, **kwargs)``, or None when it raised a GrukitError with a one-line message."""
    try:
        return call(*args, **kwargs)
    except GrukitError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(str(err))
        return None


# ------------------------------------------------------------ the key=value parser and config validation


@given(st.lists(st.one_of(text, st.builds("{}={}".format, st.sampled_from(KEYS) | text, text)), max_size=4))
def test_parse_args_gives_checked_values_or_a_clear_error(args):
    parsed = clear_error(parse_args, args)
    if parsed is not None:
        assert set(parsed) <= set(RULES)
        assert all(check_value(key, value) == value for key, value in parsed.items())


@given(st.dictionaries(st.sampled_from(KEYS) | text, values, max_size=4))
def test_resolve_gives_a_valid_config_or_a_clear_error(overrides):
    cfg = clear_error(resolve, overrides)
    if cfg is not None:
        for key in overrides:
            assert check_value(key, cfg[key]) == cfg[key]
            if isinstance(cfg[key], float):
                assert math.isfinite(cfg[key])


# ------------------------------------------------------------ file loaders

cells = st.one_of(
    st.sampled_from(["", "nan", "NaN", "inf", "1e400", "-0", "2024-13-01", "2024-01-01T00:00", "x", '"', "a,b"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-5, 5).map(str),
    st.text(max_size=6),
)


@st.composite
def damaged_tables(draw, header: list[str], row) -> str:
    """A valid table (``row(i)`` gives row i's cells) as CSV text, then damaged: cells replaced, rows dropped
    or doubled, a column removed, a header cell changed, the file cut short."""
    n = draw(st.integers(0, 80))
    rows = [header] + [row(i) for i in range(n)]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["cell", "drop", "double", "column", "cut"]))
        r = draw(st.integers(0, len(rows) - 1))
        if kind == "cell":
            rows[r] = list(rows[r])
            rows[r][draw(st.integers(0, len(rows[r]) - 1))] = draw(cells)
        elif kind == "drop" and len(rows) > 1:
            del rows[r]
        elif kind == "double":
            rows.insert(r, rows[r])
        elif kind == "column":
            rows[r] = rows[r][:-1]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    text_value = out.getvalue()
    return text_value[: draw(st.integers(0, len(text_value)))] if draw(st.booleans()) else text_value


def forecast_row(i: int) -> list[str]:
    return [f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00", f"{10 + math.sin(i / 4):.3f}", f"{20 + i % 7}"]


def classify_row(i: int) -> list[str]:
    return [f"s{i // 4}", str(i % 4), f"{math.cos(i):.3f}", "ab"[(i // 4) % 2]]


FOLDER = tempfile.TemporaryDirectory(prefix="grukit-fuzz-")  # removed when the test process ends
NUMBERS = itertools.count()


def write(suffix: str, content: str | bytes) -> str:
    """``content`` in a new file (a fresh name each time) ending in ``suffix``; its path."""
    path = Path(FOLDER.name) / f"data{next(NUMBERS)}{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@given(damaged_tables(["time", "load", "temp"], forecast_row) | st.binary(max_size=200).map(bytes))
def test_the_forecast_loader_gives_a_frame_or_a_clear_error(content):
    clear_error(load_frame, write(".csv", content), "auto", "auto", "auto", [])


@given(damaged_tables(["id", "step", "x", "label"], classify_row) | st.binary(max_size=200).map(bytes))
def test_the_classify_loader_gives_sequences_or_a_clear_error(content):
    clear_error(load_sequences, write(".csv", content))


@given(damaged_tables(["text", "label"], lambda i: [f"words {i} and more", "ab"[i % 2]]) | st.binary(max_size=200))
def test_the_text_loader_gives_texts_or_a_clear_error(content):
    clear_error(load_texts, write(".csv", content))


@given(damaged_tables(["input", "target"], lambda i: [f"{i} may 2024", f"2024-05-{1 + i % 28:02d}"]))
def test_the_seq2seq_loader_gives_pairs_or_a_clear_error(content):
    clear_error(load_pairs, write(".csv", content))


@given(st.binary(max_size=300))
def test_the_parquet_reader_gives_a_clear_error_on_a_damaged_file(content):
    clear_error(load_frame, write(".parquet", content))


def wav_bytes(samples: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(bytes(range(256)) * (2 * samples // 256 + 1))
    return out.getvalue()


@given(data=st.data())
def test_the_wav_reader_gives_samples_or_a_clear_error(data):
    damaged = bytearray(wav_bytes(data.draw(st.integers(0, 400))))
    for _ in range(data.draw(st.integers(0, 3))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    clear_error(read_wav, Path(write(".wav", bytes(damaged))), "clip.wav", 0)


def test_a_wav_whose_chunk_size_points_past_the_end_is_refused_clearly():
    """The wave module raises a bare RuntimeError when a chunk's size field points past the file (hypothesis found
    it: the fmt chunk's size, bytes 16-19, set to 255)."""
    damaged = bytearray(wav_bytes(32))
    damaged[16] = 255
    with pytest.raises(DataError, match=r"clip\.wav is not a readable WAV file .*past the end"):
        read_wav(Path(write(".wav", bytes(damaged))), "clip.wav", 0)


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    path = Path(write(".safetensors", b""))
    net = torch.nn.GRU(2, 3)
    save_checkpoint(path, net.state_dict(), {"0.step": torch.tensor(1.0)}, {"epoch": 1, "config": {"hidden": 3}})
    return path.read_bytes()


@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_or_loads_unchanged(checkpoint_bytes, data):
    damaged = bytearray(checkpoint_bytes)
    for _ in range(data.draw(st.integers(1, 3))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    original = load_checkpoint(write(".safetensors", checkpoint_bytes))
    loaded = clear_error(load_checkpoint, write(".safetensors", bytes(damaged)))
    if loaded is not None:  # only possible where the damage did not change what the file says (e.g. JSON spaces)
        for got, want in zip(loaded[:2], original[:2], strict=True):
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert loaded[2] == original[2]


# ------------------------------------------------------------ no partial run folder


@settings(max_examples=10)
@given(damaged_tables(["time", "load", "temp"], forecast_row))
def test_training_on_bad_data_fails_before_making_a_run_folder(tmp_path_factory, content):
    project = tmp_path_factory.mktemp("runs")
    model = grukit.Model("forecast", epochs=1, hidden=2, plots=False, verbose=False, project=str(project))
    report = clear_error(model.train, data=write(".csv", content))
    runs = [p for p in project.glob("*/*") if p.is_dir()]
    if report is None:
        assert runs == [], "a failed run left a run folder"
    else:
        assert [p.name for p in runs] == ["train"] and (runs[0] / "metrics.json").is_file()
