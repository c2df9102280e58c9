"""Export a trained ``Seq2Seq`` as one ONNX or TorchScript graph that decodes greedily: source (B, S) ids, batch
first, padded with 0 to the longest training source, and lengths (B,) -> output ids (B, steps): each row the
character ids of the output, then EOS (2), then PAD (0). Turning text into ids and back (the vocabularies in the
checkpoint's meta) stays in grukit. Both formats are traced through the pure-PyTorch reference backend, with the
source steps and decoder steps unrolled (so S is fixed; the batch is dynamic). Every encoder architecture
exports to TorchScript; to ONNX all but mingru (its parallel scan needs logcumsumexp, which ONNX lacks).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grukit.backends import dispatch
from grukit.errors import ConfigError
from grukit.tasks.seq2seq.data import BOS, EOS, PAD
from grukit.tasks.seq2seq.model import Seq2Seq
from grukit.workflow.export import export_checked


class GreedyDecoder(nn.Module):
    """``net`` decoding greedily for a fixed number of ``steps`` (no early stop, so it traces to one graph)."""

    def __init__(self, net: Seq2Seq, steps: int) -> None:
        super().__init__()
        self.net, self.steps = net, steps

    def forward(self, source: Tensor, lengths: Tensor) -> Tensor:
        memory, h = self.net.encode(source.t(), lengths)
        token = torch.full_like(source[:, :1].t(), BOS)  # (1, B)
        done = torch.zeros_like(lengths, dtype=torch.bool)
        ids = []
        for _ in range(self.steps):
            logits, h, _ = self.net.decode(token, h, memory)
            best = torch.where(done, PAD, logits[0].argmax(-1))
            ids.append(best)
            done = done | (best == EOS)
            token = best.unsqueeze(0)
        return torch.stack(ids, 1)


def _onnx(module: nn.Module, inputs: dict[str, Tensor]) -> Any:
    """The ONNX model of ``module`` traced by torch.onnx (TorchScript exporter), inputs named as ``inputs``."""
    import onnx

    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in [*inputs, "ids"]}
    with dispatch.force("reference"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            buffer,
            input_names=list(inputs),
            output_names=["ids"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_greedy(net: Seq2Seq, inputs: dict[str, Tensor], path: Path, fmt: str, steps: int) -> tuple[Path, float]:
    """Write the greedy decoder of ``net`` (``steps`` characters at most) as ``fmt`` ("onnx" or "torchscript")
    to ``path`` and run it on ``inputs`` (source (B, S), lengths (B,)) next to PyTorch: (path, max abs difference
    of the output ids)."""
    if fmt == "onnx" and net.arch == "mingru":
        raise ConfigError(
            "export format=onnx: a model=mingru seq2seq has no ONNX graph (its parallel scan needs logcumsumexp, "
            "which ONNX lacks); use format=torchscript, or train model=gru, lstm or transformer for ONNX"
        )
    module = GreedyDecoder(net.eval().cpu(), steps)
    return export_checked(module, inputs, path, fmt, lambda: _onnx(module, inputs))
