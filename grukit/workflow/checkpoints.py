"""Checkpoints, written atomically (``grukit.fileio.write_atomic``): a file is always either its previous
content or the complete new one, even if the run is killed.

A checkpoint is one safetensors file: the tensors (``model.*`` weights, ``optim.*`` optimiser state) and,
in its metadata under "grukit", a JSON document with the resolved config, what the task needs to rebuild
the network, and the training state (epoch, step, best score, history).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from grukit.errors import GrukitError
from grukit.fileio import write_atomic

FORMAT = "grukit-checkpoint-1"


def save_checkpoint(path: Path, model: dict[str, torch.Tensor], optim: dict[str, torch.Tensor], meta: dict) -> None:
    """One safetensors file at ``path`` (atomically) holding ``model`` and ``optim`` tensors and ``meta``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    tensors.update({f"optim.{k}": v.detach().cpu().contiguous() for k, v in optim.items()})
    write_atomic(path, save(tensors, metadata={"grukit": json.dumps({"format": FORMAT, **meta})}))


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model tensors, optimiser tensors, meta) from a checkpoint written by ``save_checkpoint``.

    ``path`` may be the .safetensors file or a run folder (its weights/best.safetensors). Raises GrukitError
    naming the file when it is missing, not a safetensors file, or not a grukit checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights" / "best.safetensors"
    if not path.is_file():
        raise GrukitError(f"checkpoint {str(path)!r} not found; give a .safetensors file or a run folder")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header["grukit"])
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise GrukitError(f"{str(path)!r} is not a grukit checkpoint ({type(err).__name__}: {err})") from None
    if meta.get("format") != FORMAT:
        raise GrukitError(f"{str(path)!r} has checkpoint format {meta.get('format')!r}; this grukit reads {FORMAT}")
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
    return model, optim, meta


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat tensors: "{param index}.{name}"."""
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{index}.{name}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what ``optimizer_tensors`` saved (the param groups keep the optimiser's current settings)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
