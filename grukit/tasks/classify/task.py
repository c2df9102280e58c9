"""The classify task for numeric sequences, texts and audio: what the generic workflow (trainer, Model, CLI) needs
to train, score, predict with and export a sequence classifier. Built from a config and data
(``ClassifyTask.prepare``), or with a checkpoint's ``meta`` (classes, how the data was read, the feature scaling
or the vocabulary of the trained model).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.tasks.classify.data import Sequences, split_indices
from grukit.tasks.classify.export import export
from grukit.tasks.classify.inputs import detect_input, read_examples
from grukit.tasks.classify.metrics import METRICS, classification_metrics, confusion
from grukit.tasks.classify.model import SequenceClassifier
from grukit.tasks.classify.stream import SequenceStream, open_stream
from grukit.tasks.classify.text import TokenClassifier, TokenSequences, build_vocab, encode, token_lists
from grukit.tasks.encoders import LABELS, check_architecture
from grukit.tasks.report import metric_lines


@dataclass
class Predictions:
    """Predicted classes of sequences: ids (S,), predicted (S,) class names, probability (S,) of that class,
    actual (S,) class names or None when the data is unlabelled."""

    ids: list[str]
    predicted: list[str]
    probability: np.ndarray
    actual: list[str] | None
    note: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sequence: id, predicted, probability, and actual when known."""
        out = []
        for i, sid in enumerate(self.ids):
            row: dict[str, Any] = {
                "id": sid,
                "predicted": self.predicted[i],
                "probability": f"{self.probability[i]:.4f}",
            }
            if self.actual is not None:
                row["actual"] = self.actual[i]
            out.append(row)
        return out


@dataclass
class ClassifyTask:
    """A classification problem: checked sequences (numeric or log-mel features, or token ids), their split and
    the feature scaling (numeric, audio) or vocabulary (text). ``meta`` is what a checkpoint holds to rebuild the
    network and read new data the same way."""

    cfg: dict[str, Any]
    seqs: Sequences | TokenSequences
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    parts: dict[str, np.ndarray]  # "train", "val", "test" -> sequence indices
    settings: dict[str, Any]  # how the data was read ("input": numeric, text or audio), see inputs.read_examples
    vocab: list[str] | None = None  # text: the token of each id
    stream: SequenceStream | None = None  # stream=true: reads the training sequences from the file, chunk by chunk
    monitor = "loss"  # validation cross-entropy: early stopping and the best checkpoint (lower is better)
    loss_name = "cross-entropy"
    export = staticmethod(export)

    @property
    def kind(self) -> str:
        return self.settings["input"]

    @property
    def example_name(self) -> str:
        """What export checks on."""
        return {"text": "texts", "audio": "WAV files"}.get(self.kind, "sequences")

    # ------------------------------------------------------------ construction

    @staticmethod
    def prepare(cfg: dict[str, Any], meta: dict[str, Any] | None = None) -> ClassifyTask:
        """Read and check cfg["data"]; split it; fit the feature scaling or build the vocabulary on the training
        split (or take the trained model's from ``meta``, checking that the data has its columns and no class it
        was not trained on)."""
        cfg = dict(cfg)
        if cfg["stream"] and cfg["mode"] == "train":
            return ClassifyTask._prepare_stream(cfg, meta)
        if cfg["sample"] != 1.0 and cfg["mode"] == "train":
            raise ConfigError("sample= draws a share of the training sequences with stream=true only; add stream=true")
        seqs, settings = read_examples(cfg, meta)
        cfg.update(settings)
        labelled = seqs.labels != ""
        unlabelled = None if labelled.all() else seqs.ids[int(np.flatnonzero(~labelled)[0])]
        classes = _classes(seqs.label, seqs.label_name, set(seqs.labels[labelled]), unlabelled, meta, meta is None)
        if meta is None or (cfg["mode"] in ("train", "val") and labelled.all()):
            train, val, test = split_indices(seqs, cfg["val_fraction"], cfg["test_fraction"], cfg["seed"])
        else:  # predict / export on possibly unlabelled data: every sequence is "test"
            train, val, test = (np.arange(0),) * 2 + (np.arange(len(seqs.ids)),)
        parts = {"train": train, "val": val, "test": test}
        if settings["input"] == "text":
            tokens = token_lists(seqs, settings["tokens"], settings["lowercase"])
            vocab = build_vocab([tokens[i] for i in train], settings["min_count"]) if meta is None else meta["vocab"]
            encoded = encode(seqs, tokens, vocab, settings["max_length"])
            return ClassifyTask(cfg, encoded, classes, np.zeros(0), np.zeros(0), parts, settings, vocab)
        if meta is None:
            rows = np.concatenate([np.arange(seqs.offsets[s], seqs.offsets[s + 1]) for s in train])
            mean, std = seqs.values[rows].mean(axis=0), seqs.values[rows].std(axis=0)
            std = np.where(std > 0, std, 1.0)
        else:
            mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        return ClassifyTask(cfg, seqs, classes, mean, std, parts, settings)

    @staticmethod
    def _prepare_stream(cfg: dict[str, Any], meta: dict[str, Any] | None) -> ClassifyTask:
        """``prepare`` for stream=true training on numeric sequences (see ``classify/stream.py``): the held-out
        sequences in memory, the training ones read from the file each epoch."""
        if detect_input(cfg) != "numeric":
            raise ConfigError("stream=true reads numeric sequences (long format); drop stream=true for text or audio")
        stream, labels, unlabelled = open_stream(cfg, meta if meta is not None else cfg)
        id_name, time_name, label_name, features = stream.columns
        classes = _classes(stream.path.name, label_name, labels, unlabelled, meta, True)
        held, held_parts, moments = stream.statistics()
        mean, std = moments.mean_std() if meta is None else (np.asarray(meta["mean"]), np.asarray(meta["std"]))
        parts = {"train": np.arange(0), **{p: np.flatnonzero(held_parts == p) for p in ("val", "test")}}
        settings = {"input": "numeric", "id": id_name, "time": time_name, "label": label_name, "features": features}
        return ClassifyTask({**cfg, **settings}, held, classes, mean, std, parts, settings, stream=stream)

    def meta(self) -> dict[str, Any]:
        out = {**self.settings, "classes": self.classes, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.vocab is not None:
            out["vocab"] = self.vocab
        else:
            out["features"] = self.seqs.feature_names
        return out

    @staticmethod
    def build_network(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
        """The classifier for ``meta``'s data; text: behind a token embedding of size cfg["embed"]."""
        text = "vocab" in meta
        net = SequenceClassifier(
            cfg["embed"] if text else len(meta["features"]),
            len(meta["classes"]),
            hidden=cfg["hidden"],
            layers=cfg["layers"],
            dropout=cfg["dropout"],
            layer_norm=cfg["layer_norm"],
            bidirectional=cfg["bidirectional"],
            pool=cfg["pool"],
            arch=check_architecture(cfg["model"]),
        )
        return TokenClassifier(len(meta["vocab"]), cfg["embed"], net) if text else net

    def describe(self) -> str:
        cfg, seqs = self.cfg, self.seqs
        lengths = f"{seqs.lengths.min()}-{seqs.lengths.max()}"
        if isinstance(seqs, TokenSequences):
            cut = f", {seqs.truncated} cut to max_length {cfg['max_length']}" if seqs.truncated else ""
            data = (
                f"{seqs.label}, {len(seqs.ids)} texts ({cfg['text']!r}), {cfg['tokens']} tokens, vocabulary "
                f"{len(self.vocab)}, length {lengths}{cut}, {len(self.classes)} classes ({cfg['label']})"
            )
        elif self.kind == "audio":
            data = (
                f"{seqs.label}, {len(seqs.ids)} WAV files at {cfg['sample_rate']} Hz, {cfg['mels']} log-mel bands, "
                f"{lengths} frames of 10 ms, {len(self.classes)} classes (sub-folders)"
            )
        else:
            count = f"{len(seqs.ids)} sequences" if self.stream is None else "held-out sequences"
            data = (
                f"{seqs.label}, {count} of {len(seqs.feature_names)} features, length {lengths}, "
                f"{len(self.classes)} classes ({seqs.label_name})"
            )
        streamed = f" (read in chunks of {self.stream.chunk_rows} rows each epoch)" if self.stream else ""
        return (
            f"{data}; "
            f"{self._sizes()['train']} train{streamed}, {len(self.parts['val'])} validation, "
            f"{len(self.parts['test'])} test; "
            f"{LABELS[cfg['model']]} hidden {cfg['hidden']} x {cfg['layers']}"
            f"{' bidirectional' if cfg['bidirectional'] else ''}, "
            f"{cfg['pool']} pooling"
        )

    # ------------------------------------------------------------ training

    def _targets(self, index: np.ndarray) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.classes)}
        return np.array([lookup[label] for label in self.seqs.labels[index]], dtype=np.int64)

    def _batch(self, index: np.ndarray) -> dict[str, Tensor]:
        """x: (T, B, F) float32 features, or (B, T) int64 token ids for text; lengths (B,) int64."""
        if isinstance(self.seqs, TokenSequences):
            x, lengths = self.seqs.padded(index)
        else:
            x, lengths = self.seqs.padded(index, self.mean, self.std)
        return {"x": torch.from_numpy(x), "lengths": torch.from_numpy(lengths)}

    def _sizes(self) -> dict[str, int]:
        """Sequences in each part (the training ones of a streamed file counted by its statistics pass)."""
        sizes = {part: len(index) for part, index in self.parts.items()}
        if self.stream is not None:
            sizes["train"] = sum(self.stream.train_per_chunk)
        return sizes

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        """Batches of shuffled training sequences (x, lengths and y (B,) class indices); streamed chunk by chunk
        with stream=true (a share ``sample`` of them)."""
        if self.stream is not None:
            yield from self.stream.batches(rng, batch, self.mean, self.std, self.classes)
            return
        order = rng.permutation(self.parts["train"])
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            yield {**self._batch(chosen), "y": torch.from_numpy(self._targets(chosen))}

    def steps_per_epoch(self, batch: int) -> int:
        if self.stream is not None:
            return self.stream.steps(batch)
        return -(-len(self.parts["train"]) // batch)

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device) -> Tensor:
        logits = net(batch["x"].to(device), batch["lengths"].to(device))
        return nn.functional.cross_entropy(logits, batch["y"].to(device))

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def probabilities(self, net: nn.Module, index: np.ndarray, device: torch.device) -> np.ndarray:
        """(S, C) class probabilities of sequences ``index``, in batches of 256."""
        net.eval()
        out = []
        for start in range(0, len(index), 256):
            batch = self._batch(index[start : start + 256])
            out.append(torch.softmax(net(batch["x"].to(device), batch["lengths"].to(device)), -1).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)))

    def evaluate(self, net: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        """Cross-entropy ("loss"), accuracy and macro-F1 on the "val" or "test" sequences."""
        index = self.parts[split]
        probs, actual = self.probabilities(net, index, device), self._targets(index)
        loss = float(-np.log(np.clip(probs[np.arange(len(index)), actual], 1e-12, None)).mean())
        return {"loss": loss, **classification_metrics(actual, probs.argmax(1), len(self.classes))}

    def majority_class(self) -> int:
        """The most frequent class among the training sequences (the lowest index on a tie)."""
        if self.stream is not None:
            return int(np.argmax([self.stream.train_labels[name] for name in self.classes]))
        return int(np.bincount(self._targets(self.parts["train"]), minlength=len(self.classes)).argmax())

    def report(self, net: nn.Module, device: torch.device) -> dict[str, Any]:
        """metrics.json: test (and validation) accuracy and macro-F1 of the model and the majority-class baseline,
        the test confusion matrix, and what they were computed on."""
        out: dict[str, Any] = {}
        for split in ("test", "val"):
            index = self.parts[split]
            if not len(index):
                continue
            actual = self._targets(index)
            predicted = self.probabilities(net, index, device).argmax(1)
            majority = np.full(len(index), self.majority_class() if self._sizes()["train"] else 0)
            out[split] = {
                "model": classification_metrics(actual, predicted, len(self.classes)),
                "majority": classification_metrics(actual, majority, len(self.classes)),
            }
            if split == "test":
                out["confusion"] = confusion(actual, predicted, len(self.classes)).tolist()
        out.update(
            classes=self.classes,
            data=self.seqs.label,
            architecture=self.cfg["model"],
            sequences=self._sizes(),
        )
        return out

    @staticmethod
    def table(report: dict[str, Any]) -> str:
        model = LABELS[report["architecture"]]
        rows = [(model, report["test"]["model"]), ("majority class", report["test"]["majority"])]
        lines = [
            f"test: {report['data']}, {report['sequences']['test']} sequences, {len(report['classes'])} classes",
            *metric_lines(rows, METRICS),
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ prediction, export, plots

    def predict(self, net: nn.Module, device: torch.device) -> Predictions:
        """The class of every sequence of the data (labels, when it has them, come out as ``actual``)."""
        index = self.parts["test"]
        probs = self.probabilities(net, index, device)
        best = probs.argmax(1)
        labels = self.seqs.labels[index]
        return Predictions(
            [self.seqs.ids[i] for i in index],
            [self.classes[c] for c in best],
            probs[np.arange(len(index)), best],
            list(labels) if (labels != "").all() else None,
        )

    def example_inputs(self) -> dict[str, Tensor]:
        """Real inputs for export checks: up to 64 "test" sequences, padded, with their lengths."""
        return self._batch(self.parts["test"][:64])

    def plot(self, net: nn.Module, device: torch.device, run_dir: Path) -> None:
        """confusion.png in ``run_dir``: the test confusion matrix (rows: actual, columns: predicted)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        index = self.parts["test"]
        matrix = confusion(self._targets(index), self.probabilities(net, index, device).argmax(1), len(self.classes))
        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(self.classes), 1.2 + 0.5 * len(self.classes)))
        ax.imshow(matrix, cmap="Blues")
        ticks = np.arange(len(self.classes))
        ax.set(xticks=ticks, yticks=ticks, xticklabels=self.classes, yticklabels=self.classes)
        ax.set(xlabel="predicted", ylabel="actual", title=f"test confusion ({len(index)} sequences)")
        for (r, c), count in np.ndenumerate(matrix):
            if count:
                ax.text(c, r, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "k")
        fig.tight_layout()
        fig.savefig(run_dir / "confusion.png", dpi=100)
        plt.close(fig)


def _classes(
    source: str, label_name: str, labels: set[str], unlabelled: str | None, meta: dict[str, Any] | None, training: bool
) -> list[str]:
    """The classes: of the data's ``labels`` for a new model, else the trained model's (``meta``), checking that
    the data has none it was not trained on. ``unlabelled``: the first sequence without a label (a DataError
    when ``training``)."""
    if training and unlabelled is not None:
        raise DataError(f"{source}: sequence {unlabelled!r} has no {label_name}; training needs every label")
    if meta is None:
        classes = sorted(labels, key=_class_order)
        if len(classes) < 2:
            raise DataError(f"{source}: column {label_name!r} has one class; classify needs two or more")
        return classes
    classes = meta["classes"]
    unseen = sorted(labels - set(classes), key=_class_order)
    if unseen:
        raise DataError(
            f"{source}: {label_name} {unseen[0]!r} was not seen in training; the model knows "
            f"{', '.join(classes)} (drop those sequences, or train on data that has them)"
        )
    return classes


def _class_order(name: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then text."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)
