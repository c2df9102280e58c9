"""The classify task for numeric sequences: what the generic workflow (trainer, Model, CLI) needs to train, score,
predict with and export a sequence classifier. Built from a config and data (``ClassifyTask.prepare``), or with
a checkpoint's ``meta`` (classes, columns and feature scaling of the trained model).
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
from grukit.tasks.classify.data import Sequences, load_sequences, split_indices
from grukit.tasks.classify.metrics import METRICS, classification_metrics, confusion
from grukit.tasks.classify.model import SequenceClassifier
from grukit.workflow.export import export_checked


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


def _export(net: nn.Module, inputs: dict[str, Tensor], path: Path, fmt: str) -> tuple[Path, float]:
    return export_checked(net, inputs, path, fmt)


@dataclass
class ClassifyTask:
    """A classification problem: checked sequences, their split and the feature scaling. ``meta`` is what a
    checkpoint holds to rebuild the network and read new data the same way."""

    cfg: dict[str, Any]
    seqs: Sequences
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray
    parts: dict[str, np.ndarray]  # "train", "val", "test" -> sequence indices
    monitor = "loss"  # validation cross-entropy: early stopping and the best checkpoint (lower is better)
    loss_name = "cross-entropy"
    example_name = "sequences"
    export = staticmethod(_export)

    # ------------------------------------------------------------ construction

    @staticmethod
    def prepare(cfg: dict[str, Any], meta: dict[str, Any] | None = None) -> ClassifyTask:
        """Read and check cfg["data"]; split it; fit the feature scaling (or take the trained model's from
        ``meta``, checking that the data has its columns and no class it was not trained on)."""
        cfg = dict(cfg)
        if meta is None:
            seqs = load_sequences(cfg["data"], cfg["id"], cfg["time"], cfg["label"], cfg["features"])
        else:
            seqs = load_sequences(cfg["data"], meta["id"], meta["time"], meta["label"], meta["features"])
        cfg.update(id=seqs.id_name, time=seqs.time_name, label=seqs.label_name, features=seqs.feature_names)
        labelled = seqs.labels != ""
        if meta is None:
            if not labelled.all():
                row = seqs.ids[int(np.flatnonzero(~labelled)[0])]
                raise DataError(f"{seqs.label}: sequence {row!r} has no {seqs.label_name}; training needs every label")
            classes = sorted(set(seqs.labels), key=_class_order)
            if len(classes) < 2:
                raise DataError(f"{seqs.label}: column {seqs.label_name!r} has one class; classify needs two or more")
        else:
            classes = meta["classes"]
            unseen = sorted(set(seqs.labels[labelled]) - set(classes), key=_class_order)
            if unseen:
                raise DataError(
                    f"{seqs.label}: {seqs.label_name} {unseen[0]!r} was not seen in training; the model knows "
                    f"{', '.join(classes)} (drop those sequences, or train on data that has them)"
                )
        if meta is None or (cfg["mode"] in ("train", "val") and labelled.all()):
            train, val, test = split_indices(seqs, cfg["val_fraction"], cfg["test_fraction"], cfg["seed"])
        else:  # predict / export on possibly unlabelled data: every sequence is "test"
            train, val, test = (np.arange(0),) * 2 + (np.arange(len(seqs.ids)),)
        if meta is None:
            rows = np.concatenate([np.arange(seqs.offsets[s], seqs.offsets[s + 1]) for s in train])
            mean, std = seqs.values[rows].mean(axis=0), seqs.values[rows].std(axis=0)
            std = np.where(std > 0, std, 1.0)
        else:
            mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        return ClassifyTask(cfg, seqs, classes, mean, std, {"train": train, "val": val, "test": test})

    def meta(self) -> dict[str, Any]:
        return {
            "id": self.seqs.id_name,
            "time": self.seqs.time_name,
            "label": self.seqs.label_name,
            "features": self.seqs.feature_names,
            "classes": self.classes,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @staticmethod
    def build_network(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
        if cfg["model"] not in ("gru",) and not cfg["model"].endswith(".safetensors"):
            raise ConfigError(f"model {cfg['model']!r} is not implemented yet for classify; use model=gru")
        return SequenceClassifier(
            len(meta["features"]),
            len(meta["classes"]),
            hidden=cfg["hidden"],
            layers=cfg["layers"],
            dropout=cfg["dropout"],
            layer_norm=cfg["layer_norm"],
            bidirectional=cfg["bidirectional"],
            pool=cfg["pool"],
        )

    def describe(self) -> str:
        cfg, seqs = self.cfg, self.seqs
        lengths = seqs.lengths
        return (
            f"{seqs.label}, {len(seqs.ids)} sequences of {len(seqs.feature_names)} features, length "
            f"{lengths.min()}-{lengths.max()}, {len(self.classes)} classes ({seqs.label_name}); "
            f"{len(self.parts['train'])} train, {len(self.parts['val'])} validation, {len(self.parts['test'])} test; "
            f"GRU hidden {cfg['hidden']} x {cfg['layers']}{' bidirectional' if cfg['bidirectional'] else ''}, "
            f"{cfg['pool']} pooling"
        )

    # ------------------------------------------------------------ training

    def _targets(self, index: np.ndarray) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.classes)}
        return np.array([lookup[label] for label in self.seqs.labels[index]], dtype=np.int64)

    def _batch(self, index: np.ndarray) -> dict[str, Tensor]:
        x, lengths = self.seqs.padded(index, self.mean, self.std)
        return {"x": torch.from_numpy(x), "lengths": torch.from_numpy(lengths)}

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        order = rng.permutation(self.parts["train"])
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            yield {**self._batch(chosen), "y": torch.from_numpy(self._targets(chosen))}

    def steps_per_epoch(self, batch: int) -> int:
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
            majority = np.full(len(index), self.majority_class() if len(self.parts["train"]) else 0)
            out[split] = {
                "model": classification_metrics(actual, predicted, len(self.classes)),
                "majority": classification_metrics(actual, majority, len(self.classes)),
            }
            if split == "test":
                out["confusion"] = confusion(actual, predicted, len(self.classes)).tolist()
        out.update(
            classes=self.classes,
            data=self.seqs.label,
            sequences={part: len(index) for part, index in self.parts.items()},
        )
        return out

    @staticmethod
    def table(report: dict[str, Any]) -> str:
        rows = [("GRU", report["test"]["model"]), ("majority class", report["test"]["majority"])]
        lines = [
            f"test: {report['data']}, {report['sequences']['test']} sequences, {len(report['classes'])} classes",
            f"{'model':<16}" + "".join(f"{name:>10}" for name in METRICS),
            *(f"{name:<16}" + "".join(f"{m[k]:>10.3f}" for k in METRICS) for name, m in rows),
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


def _class_order(name: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then text."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)
