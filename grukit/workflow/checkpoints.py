"""Checkpoints, written atomically (``grukit.fileio.write_atomic``): a file is always either its previous
content or the complete new one, even if the run is killed.

A checkpoint is one safetensors file: the tensors (``model.*`` weights, ``optim.*`` optimiser state) and,
in its metadata under "grukit", a JSON document with the resolved config, what the task needs to rebuild
the network, and the training state (epoch, step, best score, history). Under "sha256" the metadata holds a
checksum of that document and of every tensor (name, dtype, shape, bytes); ``load_checkpoint`` recomputes it,
so a truncated or corrupted file is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from grukit.errors import GrukitError
from grukit.fileio import write_atomic

FORMAT = "grukit-checkpoint-2"  # 2: with the "sha256" checksum


def checksum(document: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of the metadata ``document`` and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(document.encode())
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(f"\0{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, model: dict[str, torch.Tensor], optim: dict[str, torch.Tensor], meta: dict) -> None:
    """One safetensors file at ``path`` (atomically) holding ``model`` and ``optim`` tensors, ``meta`` and
    their checksum."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    tensors.update({f"optim.{k}": v.detach().cpu().contiguous() for k, v in optim.items()})
    document = json.dumps({"format": FORMAT, **meta})
    write_atomic(path, save(tensors, metadata={"grukit": document, "sha256": checksum(document, tensors)}))


ADVICE = "use the run's other checkpoint (weights/best.safetensors or weights/last.safetensors) or train again"


def _damaged(path: Path, what: str) -> GrukitError:
    return GrukitError(f"checkpoint {str(path)!r} is damaged ({what}) and was not loaded; {ADVICE}")


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(model tensors, optimiser tensors, meta) from a checkpoint written by ``save_checkpoint``.

    ``path`` may be the .safetensors file or a run folder (its weights/best.safetensors). Raises GrukitError
    naming the file when it is missing, truncated or corrupt (checksum mismatch), or not a grukit checkpoint.
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
    except (SafetensorError, OSError, ValueError) as err:
        raise GrukitError(
            f"{str(path)!r} is not a grukit checkpoint, or it is truncated or corrupt ({type(err).__name__}: "
            f"{err}); it was not loaded: {ADVICE}"
        ) from None
    if "grukit" not in header:
        raise GrukitError(f"{str(path)!r} is a safetensors file but not a grukit checkpoint (no grukit metadata)")
    if "sha256" not in header:
        raise GrukitError(f"{str(path)!r} has no checksum: an older grukit wrote it (format 1); train again")
    if header["sha256"] != checksum(header["grukit"], tensors):
        raise _damaged(path, "checksum mismatch")
    try:
        meta = json.loads(header["grukit"])
    except ValueError as err:
        raise _damaged(path, f"metadata is not JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise GrukitError(f"{str(path)!r} has checkpoint format {found!r}; this grukit reads {FORMAT}: train again")
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
