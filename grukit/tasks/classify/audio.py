"""Classify audio: a folder of WAV files, one sub-folder per class, turned into log-mel feature sequences.

Layouts of ``data=FOLDER``: ``FOLDER/CLASS/*.wav``, or ``FOLDER/train/CLASS/*.wav`` and ``FOLDER/test/CLASS/*.wav``
to fix the test set; for predict also ``FOLDER/*.wav`` (unlabelled) or one ``.wav`` file. Every file must be
PCM 16-bit mono at one sample rate (the first file's, or the trained model's): another rate or channel count,
or a file the ``wave`` module cannot read, is a one-line ``DataError`` naming the file and the fix.

Features: 25 ms Hann windows every 10 ms, the power spectrum (FFT size: the next power of two), a triangular
mel filterbank (HTK mel scale, 0 Hz to half the rate) and the natural log; one (frames, mels) sequence per file.
"""

from __future__ import annotations

import wave
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from grukit.errors import DataError
from grukit.tasks.classify.data import Sequences

FRAME_MS, HOP_MS = 25, 10
SPLITS = ("train", "test")


def _is_wav(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".wav"


def find_wavs(data: str) -> tuple[Path, list[tuple[Path, str, str]]]:
    """(root, [(file, class, split)]) for the layouts in the module docstring, files sorted by path; class and
    split are "" where the layout has none. DataError when there are no WAV files."""
    root = Path(data).expanduser()
    if _is_wav(root):
        return root.parent, [(root, "", "")]
    if not root.is_dir():
        raise DataError(f"data {data!r} is neither a folder of WAV files nor a .wav file; give one (input=audio)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_wav(p))
    if not folders:
        if not loose:
            raise DataError(f"folder {data!r} has no .wav files; give one sub-folder of WAV files per class")
        return root, [(p, "", "") for p in loose]
    if loose:
        raise DataError(
            f"folder {data!r}: {loose[0].name} lies next to the class folders; move it into its class folder"
        )
    split_layout = {p.name for p in folders} <= set(SPLITS)
    parts = [(p, p.name) for p in folders] if split_layout else [(root, "")]
    found = []
    for folder, split in parts:
        for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += [(f, cls.name, split) for f in sorted(cls.iterdir()) if _is_wav(f)]
    if not found:
        raise DataError(f"folder {data!r} has no .wav files in its class folders; give one folder of WAVs per class")
    return root, found


def read_wav(path: Path, name: str, rate: int) -> tuple[np.ndarray, int]:
    """The samples of a PCM 16-bit mono WAV as (N,) float32 in [-1, 1), and its rate. ``rate`` (0: any) is the
    rate it must have; ``name`` is how messages call the file."""
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width, got = handle.getnchannels(), handle.getsampwidth(), handle.getframerate()
            raw = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError, RuntimeError) as err:  # RuntimeError: the wave module's seek past a chunk's end
        reason = str(err) or f"{type(err).__name__}: a chunk size points past the end of the file"
        raise DataError(f"{name} is not a readable WAV file ({reason}); save it as PCM 16-bit mono WAV") from None
    if channels != 1:
        raise DataError(f"{name} has {channels} channels; make it mono, e.g. sox IN.wav -c 1 OUT.wav")
    if width != 2:
        raise DataError(f"{name} has {8 * width}-bit samples; make it PCM 16-bit, e.g. sox IN.wav -b 16 OUT.wav")
    if rate and got != rate:
        raise DataError(f"{name} is sampled at {got} Hz, not {rate} Hz; resample it, e.g. sox IN.wav -r {rate} OUT.wav")
    if len(raw) % 2:
        raise DataError(f"{name} is truncated (its data ends mid-sample); save it again as PCM 16-bit mono WAV")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if len(samples) < round(got * FRAME_MS / 1000):
        raise DataError(f"{name} has {len(samples)} samples, less than one {FRAME_MS} ms frame; drop it or pad it")
    return samples, got


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


@cache
def mel_filterbank(n_fft: int, rate: int, mels: int) -> Tensor:
    """(mels, n_fft // 2 + 1) float64 triangular filters, centres equally spaced on the HTK mel scale between
    0 Hz and rate / 2, each peaking at 1 at its centre."""
    edges_mel = np.linspace(0.0, _hz_to_mel(np.array(rate / 2)), mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins = np.arange(n_fft // 2 + 1) * rate / n_fft
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - low) / (centre - low), (high - bins) / (high - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None))


def log_mel(samples: np.ndarray, rate: int, mels: int) -> np.ndarray:
    """samples (N,) -> (frames, mels) float64 log mel power: 25 ms Hann frames every 10 ms (no padding)."""
    window = round(rate * FRAME_MS / 1000)
    hop = round(rate * HOP_MS / 1000)
    n_fft = 1 << (window - 1).bit_length()
    frames = torch.from_numpy(samples.astype(np.float64)).unfold(0, window, hop)  # (F, window)
    frames = frames * torch.hann_window(window, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(frames, n=n_fft).abs().square()  # (F, n_fft // 2 + 1)
    return torch.log(power @ mel_filterbank(n_fft, rate, mels).T + 1e-10).numpy()


def load_audio(data: str, sample_rate: int, mels: int, max_length: int) -> tuple[Sequences, int]:
    """Every WAV of ``data`` as log-mel sequences (first ``max_length`` frames; 0: all) with its class (the
    folder) and split, and the sample rate (``sample_rate``, or the first file's when 0)."""
    root, files = find_wavs(data)
    features, offsets = [], [0]
    for path, _, _ in files:
        samples, sample_rate = read_wav(path, path.relative_to(root.parent).as_posix(), sample_rate)
        feats = log_mel(samples, sample_rate, mels)[: max_length or None]
        features.append(feats)
        offsets.append(offsets[-1] + len(feats))
    seqs = Sequences(
        label=f"folder {Path(data).name!r}",
        id_name="file",
        time_name="frame",
        label_name="class folder",
        feature_names=[f"mel{i + 1}" for i in range(mels)],
        ids=[path.relative_to(root).as_posix() for path, _, _ in files],
        values=np.concatenate(features),
        offsets=np.array(offsets),
        labels=np.array([cls for _, cls, _ in files], dtype=object),
        split=np.array([split for _, _, split in files], dtype=object),
    )
    return seqs, sample_rate
