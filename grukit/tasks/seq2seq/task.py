"""The seq2seq task: what the generic workflow (trainer, Model, CLI) needs to train, score, predict with and
export a character-level encoder-decoder. Built from a config and data (``Seq2SeqTask.prepare``), or with a
checkpoint's ``meta`` (columns, character vocabularies and lengths of the trained model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.tasks.encoders import LABELS, check_architecture
from grukit.tasks.report import metric_lines
from grukit.tasks.seq2seq.data import (
    BOS,
    PAD,
    SPECIALS,
    Pairs,
    decode,
    encode_sources,
    encode_targets,
    load_pairs,
    pad,
    split_indices,
    vocabulary,
)
from grukit.tasks.seq2seq.decoding import beam_search, greedy
from grukit.tasks.seq2seq.export import GreedyDecoder, export_greedy
from grukit.tasks.seq2seq.metrics import METRICS, seq2seq_metrics
from grukit.tasks.seq2seq.model import Seq2Seq

BASELINES = {"copy": "copy the source", "most_frequent": "most frequent target"}
DECODE_BATCH = 256  # sources decoded at once (divided by the beam width for beam search)
BUCKET = 20  # training batches whose pairs are sorted by source length together


@dataclass
class Translations:
    """Decoded outputs: sources (N,), predicted (N,), targets (N,) or None when the data has none."""

    sources: list[str]
    predicted: list[str]
    targets: list[str] | None
    note: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per pair: source, predicted, and target when known."""
        out = []
        for i, source in enumerate(self.sources):
            row = {"source": source, "predicted": self.predicted[i]}
            if self.targets is not None:
                row["target"] = self.targets[i]
            out.append(row)
        return out


@dataclass
class Seq2SeqTask:
    """A seq2seq problem: checked pairs, their split and the character vocabularies. ``meta`` is what a
    checkpoint holds to rebuild the network and read new data the same way."""

    cfg: dict[str, Any]
    pairs: Pairs
    source_chars: str
    target_chars: str
    max_source: int  # longest training source (characters): the length exported models take
    max_target: int  # longest training target: decoding stops after twice as many characters
    parts: dict[str, np.ndarray]  # "train", "val", "test" -> row indices
    monitor = "cer"  # validation character error rate (greedy decoding): early stopping and the best checkpoint
    loss_name = "cross-entropy per character"
    example_name = "sources"
    compare_note = (
        "models: the source encoder only; every one decodes with the same attention GRU decoder "
        "(latency: greedy decoding of the test sources)"
    )
    # devices>1: batches are time-major, source (S, B), inputs and outputs (T, B); lengths (B,) is batch-first
    batch_axes: ClassVar[dict[str, int]] = {"source": 1, "inputs": 1, "outputs": 1}

    def __post_init__(self) -> None:
        self.sources = encode_sources(self.pairs, self.source_chars)
        self.steps = min(2 * self.max_target, self.cfg["max_length"] or 2 * self.max_target) + 1

    # ------------------------------------------------------------ construction

    @staticmethod
    def prepare(cfg: dict[str, Any], meta: dict[str, Any] | None = None) -> Seq2SeqTask:
        """Read and check cfg["data"] and split it; build the vocabularies (or take the trained model's from
        ``meta``: then a source character it does not know is an error, as is, when training on, a target one)."""
        cfg = dict(cfg)
        training = cfg["mode"] == "train"
        if cfg["stream"] or cfg["sample"] != 1.0:
            raise ConfigError("seq2seq reads its pairs whole: drop stream= and sample= (they serve forecast, classify)")
        columns = cfg["columns"] if meta is None else [meta["input"], meta["target"]]
        pairs = load_pairs(cfg["data"], columns, max_length=cfg["max_length"], training=training)
        cfg["columns"] = [pairs.input_name, pairs.target_name]
        if cfg["mode"] == "val" and pairs.targets is None:
            raise DataError(f"{pairs.label}: val needs targets (column {pairs.target_name!r}); predict needs none")
        if meta is None:
            source_chars, target_chars = vocabulary(pairs.sources), vocabulary(pairs.targets)
            max_source, max_target = max(map(len, pairs.sources)), max(map(len, pairs.targets))
        else:
            source_chars, target_chars = meta["source_chars"], meta["target_chars"]
            max_source, max_target = meta["max_source"], meta["max_target"]
            if training:
                _check_known(pairs, target_chars)
        if pairs.targets is not None and cfg["mode"] in ("train", "val"):
            parts = split_indices(len(pairs.sources), cfg["val_fraction"], cfg["test_fraction"], cfg["seed"])
        else:  # predict / export: every pair is "test"
            parts = {"train": np.arange(0), "val": np.arange(0), "test": np.arange(len(pairs.sources))}
        return Seq2SeqTask(cfg, pairs, source_chars, target_chars, max_source, max_target, parts)

    def meta(self) -> dict[str, Any]:
        return {
            "input": self.pairs.input_name,
            "target": self.pairs.target_name,
            "source_chars": self.source_chars,
            "target_chars": self.target_chars,
            "max_source": self.max_source,
            "max_target": self.max_target,
        }

    @staticmethod
    def build_network(cfg: dict[str, Any], meta: dict[str, Any]) -> nn.Module:
        """The untrained network for the resolved ``cfg`` (its ``model``: the encoder architecture) and ``meta``."""
        return Seq2Seq(
            len(meta["source_chars"]) + SPECIALS,
            len(meta["target_chars"]) + SPECIALS,
            hidden=cfg["hidden"],
            embed=cfg["embed"],
            layers=cfg["layers"],
            dropout=cfg["dropout"],
            layer_norm=cfg["layer_norm"],
            arch=check_architecture(cfg["model"]),
        )

    def describe(self) -> str:
        cfg, pairs = self.cfg, self.pairs
        source_lengths = [len(s) for s in pairs.sources]
        target_lengths = [len(t) for t in pairs.targets or [""]]
        return (
            f"{pairs.label}, {len(pairs.sources)} pairs ({pairs.input_name} -> {pairs.target_name}), source "
            f"{min(source_lengths)}-{max(source_lengths)} characters ({len(self.source_chars)} distinct), target "
            f"{min(target_lengths)}-{max(target_lengths)} ({len(self.target_chars)} distinct); "
            f"{len(self.parts['train'])} train, {len(self.parts['val'])} validation, {len(self.parts['test'])} test; "
            f"bidirectional {LABELS.get(cfg['model'], cfg['model'])} encoder and attention GRU decoder, "
            f"hidden {cfg['hidden']} x {cfg['layers']}, "
            f"{_decoding(cfg['beam'])}"
        )

    # ------------------------------------------------------------ training

    def _batch(self, index: np.ndarray, with_targets: bool) -> dict[str, Tensor]:
        source, lengths = pad([self.sources[i] for i in index])
        batch = {"source": torch.from_numpy(source), "lengths": torch.from_numpy(lengths)}
        if with_targets:
            outputs, _ = pad(encode_targets([self.pairs.targets[i] for i in index], self.target_chars))
            inputs = np.concatenate([np.full((1, len(index)), BOS), outputs[:-1]])
            batch.update(inputs=torch.from_numpy(inputs), outputs=torch.from_numpy(outputs))
        return batch

    def train_batches(self, rng: np.random.Generator, batch: int) -> Iterator[dict[str, Tensor]]:
        """Shuffled batches of pairs of similar source length (less padding for the encoder): the shuffled pairs
        are sorted by length in pools of BUCKET batches, cut into batches, and the batches shuffled."""
        order = rng.permutation(self.parts["train"])
        lengths = np.array([len(self.sources[i]) for i in order])
        pool = batch * BUCKET
        for start in range(0, len(order), pool):
            part = slice(start, start + pool)
            order[part] = order[part][np.argsort(lengths[part], kind="stable")]
        starts = rng.permutation(np.arange(0, len(order), batch))
        for start in starts:
            yield self._batch(order[start : start + batch], with_targets=True)

    def steps_per_epoch(self, batch: int) -> int:
        return -(-len(self.parts["train"]) // batch)

    def loss(self, net: nn.Module, batch: dict[str, Tensor], device: torch.device) -> Tensor:
        """Teacher-forced cross-entropy per target character (EOS included, padding not)."""
        logits = net(batch["source"].to(device), batch["lengths"].to(device), batch["inputs"].to(device))
        targets = batch["outputs"].to(device).flatten()
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets, ignore_index=PAD)

    # ------------------------------------------------------------ decoding and evaluation

    @torch.no_grad()
    def translate(self, net: nn.Module, index: np.ndarray, device: torch.device, beam: int = 1) -> list[str]:
        """The decoded outputs of rows ``index`` (greedy for beam=1, else beam search), in the order of ``index``."""
        net.eval()
        out: list[str] = [""] * len(index)
        order = np.argsort([len(self.sources[i]) for i in index], kind="stable")  # similar lengths batch together
        chunk = max(DECODE_BATCH // beam, 1)
        for start in range(0, len(order), chunk):
            positions = order[start : start + chunk]
            batch = self._batch(index[positions], with_targets=False)
            source, lengths = batch["source"].to(device), batch["lengths"].to(device)
            if beam == 1:
                ids = greedy(net, source, lengths, self.steps)[0]
            else:
                ids = beam_search(net, source, lengths, self.steps, beam)[0]
            for p, row in zip(positions, ids.tolist(), strict=True):
                out[p] = decode(row, self.target_chars)
        return out

    def _targets(self, index: np.ndarray) -> list[str]:
        return [self.pairs.targets[i] for i in index]

    @torch.no_grad()
    def evaluate(self, net: nn.Module, split: str, device: torch.device) -> dict[str, float]:
        """Teacher-forced cross-entropy ("loss"), exact match and CER (greedy decoding) on the "val" or "test" pairs."""
        index = self.parts[split]
        net.eval()
        total, count = 0.0, 0
        for start in range(0, len(index), DECODE_BATCH):
            batch = self._batch(index[start : start + DECODE_BATCH], with_targets=True)
            characters = int((batch["outputs"] != PAD).sum())
            total += float(self.loss(net, batch, device)) * characters
            count += characters
        return {"loss": total / count, **seq2seq_metrics(self._targets(index), self.translate(net, index, device))}

    def baselines(self, index: np.ndarray) -> dict[str, list[str]]:
        """Each baseline's outputs for rows ``index``: the source itself, and the most frequent training target."""
        train_targets = self._targets(self.parts["train"])
        frequent = Counter(train_targets).most_common(1)[0][0] if train_targets else ""
        return {"copy": [self.pairs.sources[i] for i in index], "most_frequent": [frequent] * len(index)}

    def report(self, net: nn.Module, device: torch.device) -> dict[str, Any]:
        """metrics.json: test (and validation) exact match and CER of the model (decoded with the config's beam)
        and of the baselines, a few test mistakes, and what they were computed on."""
        out: dict[str, Any] = {}
        for split in ("test", "val"):
            index = self.parts[split]
            if not len(index):
                continue
            targets, predicted = self._targets(index), self.translate(net, index, device, self.cfg["beam"])
            out[split] = {"model": seq2seq_metrics(targets, predicted)}
            out[split].update({k: seq2seq_metrics(targets, v) for k, v in self.baselines(index).items()})
            if split == "test":
                wrong = [i for i in range(len(index)) if predicted[i] != targets[i]][:5]
                out["test_mistakes"] = [
                    {"source": self.pairs.sources[index[i]], "target": targets[i], "predicted": predicted[i]}
                    for i in wrong
                ]
        out.update(
            data=self.pairs.label,
            architecture=self.cfg["model"],
            beam=self.cfg["beam"],
            pairs={part: len(index) for part, index in self.parts.items()},
        )
        return out

    @staticmethod
    def table(report: dict[str, Any]) -> str:
        rows = [(f"{LABELS[report['architecture']]} seq2seq", report["test"]["model"])]
        rows += [(title, report["test"][key]) for key, title in BASELINES.items()]
        lines = [
            f"test: {report['data']}, {report['pairs']['test']} pairs, {_decoding(report['beam'])}",
            *metric_lines(rows, METRICS, name_width=22, width=13, digits=4),
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------ prediction, export, plots

    def predict(self, net: nn.Module, device: torch.device) -> Translations:
        """The decoded output of every source of the data (targets, when it has them, come out too)."""
        index = self.parts["test"]
        predicted = self.translate(net, index, device, self.cfg["beam"])
        targets = self._targets(index) if self.pairs.targets is not None else None
        return Translations([self.pairs.sources[i] for i in index], predicted, targets)

    def example_inputs(self) -> dict[str, Tensor]:
        """Real inputs for export checks: up to 64 "test" sources, batch first, padded to the longest training
        source (the length exported models take): source (B, S) ids, lengths (B,)."""
        index = self.parts["test"][:64]
        source, lengths = pad([self.sources[i] for i in index], self.max_source)
        return {"source": torch.from_numpy(source).t().contiguous(), "lengths": torch.from_numpy(lengths)}

    def inference_module(self, net: nn.Module) -> nn.Module:
        """What ``benchmark`` and ``compare`` time on ``example_inputs()``: greedy decoding of the sources, the
        exported graph's computation (``self.steps`` decoder steps, no early stop): source (B, S), lengths (B,)
        -> ids (B, steps)."""
        return GreedyDecoder(net, self.steps)

    def export(self, net: nn.Module, inputs: dict[str, Tensor], path: Path, fmt: str) -> tuple[Path, float]:
        """The greedy decoder as ONNX or TorchScript at ``path``, checked on ``inputs``: (path, max abs diff of
        the output ids)."""
        return export_greedy(net, inputs, path, fmt, self.steps)

    def plot(self, net: nn.Module, device: torch.device, run_dir: Path) -> None:
        """attention.png in ``run_dir``: the decoder's attention over the source for four test pairs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        index = self.parts["test"][:4]
        batch = self._batch(index, with_targets=False)
        ids, _, weights = greedy(net.eval(), batch["source"].to(device), batch["lengths"].to(device), self.steps)
        fig, axes = plt.subplots(1, len(index), figsize=(4 * len(index), 3.5), squeeze=False)
        for ax, b, row in zip(axes[0], range(len(index)), index, strict=True):
            source = self.pairs.sources[row]
            output = decode(ids[b].tolist(), self.target_chars)
            ax.imshow(weights[b, : len(output) + 1, : len(source)].cpu().numpy(), cmap="Greys", aspect="auto")
            ax.set_xticks(range(len(source)), list(source), fontsize=7)
            ax.set_yticks(range(len(output) + 1), [*output, "</s>"], fontsize=7)
            ax.set_title(f"{source} -> {output}", fontsize=8)
        fig.suptitle("attention (rows: output characters, columns: source characters)", fontsize=9)
        fig.tight_layout()
        fig.savefig(run_dir / "attention.png", dpi=100)
        plt.close(fig)


def _decoding(beam: int) -> str:
    return "greedy decoding" if beam == 1 else f"beam search (beam {beam})"


def _check_known(pairs: Pairs, chars: str) -> None:
    """DataError naming the first target character not in ``chars`` (training a trained model further)."""
    known = set(chars)
    for row, text in enumerate(pairs.targets):
        for char in text:
            if char not in known:
                raise DataError(
                    f"{pairs.where(row, pairs.target_name)}: character {char!r} is not in the model's target "
                    "characters; a trained model cannot learn new ones: train a new model (without model=...)"
                )
