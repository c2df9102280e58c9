"""Classify audio: WAV reading and its errors, the log-mel features, and ``grukit classify`` end to end on spoken
words synthesised with espeak-ng (train voices in train/, held-out voices in test/). The score is on synthetic
speech from one synthesiser: it checks that the pipeline learns, never real-speech accuracy."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

import grukit
from grukit.errors import DataError
from grukit.tasks.classify.audio import find_wavs, load_audio, log_mel, mel_filterbank
from tests.workflow.forecast_files import grukit as run_cli

WORDS = ("yes", "no", "stop", "seven")
TRAIN_VOICES = ("en-gb+m1", "en-us+f2", "en-gb-scotland+m3", "en-029+f4", "en-gb-x-rp+m7", "en-us-nyc+f1")
TEST_VOICES = ("en-gb-x-gbclan+m4", "en-us+f3")


def require(*tools: str) -> None:
    """Skip when a tool is missing; under CI=true fail instead (.ci/run installs them)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install -y espeak-ng sox)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    """samples (N,) in [-1, 1] as a PCM WAV (the same samples in every channel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = {1: 127, 2: 32767}[width]
    ints = np.repeat((samples * scale).astype("<i2" if width == 2 else np.uint8), channels)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(ints.tobytes())
    return path


def tone(hz: float, seconds: float = 0.2, rate: int = 16000) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def test_log_mel_of_a_tone_peaks_in_its_band():
    bank = mel_filterbank(512, 16000, 40).numpy()
    assert bank.shape == (40, 257) and (bank.max(axis=1) > 0.5).all()
    features = log_mel(tone(1000.0).astype(np.float32), 16000, 40)
    assert features.shape == (1 + (3200 - 400) // 160, 40)  # 25 ms frames every 10 ms
    centres = bank.argmax(axis=1) * 16000 / 512  # Hz at each filter's peak
    assert abs(centres[features.mean(axis=0).argmax()] - 1000.0) < 80


def test_folder_layouts(tmp_path):
    for split, cls, name in [("train", "a", "1"), ("train", "b", "2"), ("test", "a", "3"), ("test", "b", "4")]:
        write_wav(tmp_path / "fixed" / split / cls / f"{name}.wav", tone(300.0 * int(name)))
    seqs, rate = load_audio(str(tmp_path / "fixed"), 0, 20, 0)
    assert rate == 16000 and seqs.ids == ["test/a/3.wav", "test/b/4.wav", "train/a/1.wav", "train/b/2.wav"]
    assert list(seqs.labels) == ["a", "b", "a", "b"] and list(seqs.split) == ["test", "test", "train", "train"]
    assert seqs.values.shape == (4 * 18, 20) and seqs.feature_names[0] == "mel1"
    seqs, _ = load_audio(str(tmp_path / "fixed" / "train"), 16000, 20, 5)  # class folders, no split; 5 frames
    assert list(seqs.labels) == ["a", "b"] and list(seqs.split) == ["", ""] and seqs.lengths.tolist() == [5, 5]
    _, files = find_wavs(str(tmp_path / "fixed" / "test" / "a"))  # loose files: unlabelled
    assert [(f.name, cls) for f, cls, _ in files] == [("3.wav", "")]


def test_bad_wavs_are_one_clear_error(tmp_path):
    def error(folder: Path, rate: int = 0) -> str:
        with pytest.raises(DataError) as caught:
            load_audio(str(folder), rate, 20, 0)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    write_wav(tmp_path / "d" / "a" / "ok.wav", tone(440.0))
    write_wav(tmp_path / "d" / "b" / "x.wav", tone(440.0), rate=8000)
    expected = "d/b/x.wav is sampled at 8000 Hz, not 16000 Hz; resample it, e.g. sox IN.wav -r 16000 OUT.wav"
    assert error(tmp_path / "d") == expected
    assert "d/a/ok.wav is sampled at 16000 Hz, not 22050 Hz" in error(tmp_path / "d", rate=22050)
    write_wav(tmp_path / "d" / "b" / "x.wav", tone(440.0), channels=2)
    assert "d/b/x.wav has 2 channels; make it mono" in error(tmp_path / "d")
    write_wav(tmp_path / "d" / "b" / "x.wav", tone(440.0), width=1)
    assert "d/b/x.wav has 8-bit samples; make it PCM 16-bit" in error(tmp_path / "d")
    (tmp_path / "d" / "b" / "x.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    assert "d/b/x.wav is not a readable WAV file" in error(tmp_path / "d")
    write_wav(tmp_path / "d" / "b" / "x.wav", tone(440.0, seconds=0.01))
    assert "d/b/x.wav has 160 samples, less than one 25 ms frame" in error(tmp_path / "d")
    write_wav(tmp_path / "d" / "loose.wav", tone(440.0))
    assert "loose.wav lies next to the class folders; move it into its class folder" in error(tmp_path / "d")
    assert "is neither a folder of WAV files nor a .wav file" in error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "folder" in error(tmp_path / "empty") and "has no .wav files" in error(tmp_path / "empty")


def synthesise(root: Path) -> None:
    """root/train/WORD/*.wav (6 voices x 2 speeds) and root/test/WORD/*.wav (2 other voices x 2 speeds):
    espeak-ng at 22050 Hz, PCM 16-bit mono. 64 clips, run 8 at a time."""
    jobs = []
    for split, voices, speeds in (("train", TRAIN_VOICES, (130, 180)), ("test", TEST_VOICES, (145, 165))):
        for word in WORDS:
            (root / split / word).mkdir(parents=True)
            for voice in voices:
                for speed in speeds:
                    out = root / split / word / f"{voice.replace('+', '_')}_{speed}.wav"
                    jobs.append(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), word])
    for start in range(0, len(jobs), 8):
        running = [subprocess.Popen(job) for job in jobs[start : start + 8]]
        assert all(p.wait(timeout=60) == 0 for p in running)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    require("espeak-ng", "sox")
    folder = tmp_path_factory.mktemp("audio")
    synthesise(folder / "words")
    return folder


def test_train_val_predict_export_on_spoken_words(spoken, capsys, monkeypatch):
    monkeypatch.setenv("GRUKIT_BACKEND", "reference")  # as the command-line runs: no kernel build here
    folder = spoken
    data = folder / "words"
    args = ["epochs=6", "hidden=16", "batch=16", "lr=0.01", "mels=24", "plots=false"]
    result = run_cli("classify", "train", f"data={data}", *args, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "64 WAV files at 22050 Hz, 24 log-mel bands" in result.stderr
    run = folder / "runs" / "classify" / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sequences"]["test"] == 16 and metrics["classes"] == sorted(WORDS)
    held_out = metrics["test"]["model"]["accuracy"]  # on voices never heard in training
    assert held_out >= 0.5 > metrics["test"]["majority"]["accuracy"] == 0.25, metrics["test"]

    model = grukit.Model.load(run)
    model.cfg.update(verbose=False, project=str(folder / "runs"))
    assert model.val()["test"]["model"]["accuracy"] == held_out
    loose = folder / "loose"
    loose.mkdir()
    for path in sorted((data / "test").rglob("*.wav"))[:4]:
        shutil.copy(path, loose / f"{path.parent.name}_{path.name}")
    model.predict(str(loose))
    with open(model.output_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and set(rows[0]) == {"id", "predicted", "probability"}
    assert {r["predicted"] for r in rows} <= set(WORDS)
    model.cfg["verbose"] = True
    capsys.readouterr()
    assert model.export(format="onnx") == run / "weights" / "best.onnx"
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch on 64 real WAV files" in printed
    assert float(printed.rsplit("max abs diff ", 1)[1]) < 1e-4
    assert model.export(format="torchscript").is_file()

    resampled = folder / "other_rate" / "yes" / "clip.wav"
    resampled.parent.mkdir(parents=True)
    subprocess.run(["sox", str(data / "test" / "yes" / "en-us_f3_145.wav"), "-r", "16000", str(resampled)], check=True)
    with pytest.raises(DataError) as caught:
        model.predict(str(resampled.parent.parent))
    assert "yes/clip.wav is sampled at 16000 Hz, not 22050 Hz; resample it" in str(caught.value)
