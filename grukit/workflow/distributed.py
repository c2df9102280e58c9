"""Multi-process training on PyTorch's own engine: DistributedDataParallel over gloo (CPU) or NCCL (GPU).

Two ways in, one code path after that:

- ``devices=N`` (``grukit TASK train devices=N``, ``Model.train(devices=N)``): ``spawn`` starts N worker processes
  on this machine (torch.multiprocessing), with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set.
- ``torchrun --nproc-per-node N [--nnodes ...] -m grukit TASK train ...``: torchrun starts the workers and sets
  that environment itself (env:// rendezvous); ``TORCHELASTIC_RESTART_COUNT`` tells a restarted worker apart.

In every worker ``join`` yields a ``Group``: rank, world size, the worker's device, and the few collective steps
the trainer needs (a shard of each global batch, sums across ranks, rank 0's decisions shared with every rank).
A single process gets a ``Group`` of one whose steps do nothing, so the trainer has one code path.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from grukit.errors import ConfigError, GrukitError
from grukit.fileio import write_json

JOB_FILE = "torchrun.json"  # in a run folder started under torchrun: {"run_id": TORCHELASTIC_RUN_ID}


def world_size() -> int:
    """The number of workers the launcher (torchrun or ``spawn``) started; 1 outside a launched group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True in a worker a launcher (torchrun, ``spawn``) started: it does not start workers of its own."""
    return "WORLD_SIZE" in os.environ


def restarted() -> bool:
    """True in a worker that torchrun restarted after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def mark_job(run_dir: Path) -> None:
    """Under torchrun, note the job's id (``--rdzv-id``; a fresh one with ``--standalone``) in its run folder."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        write_json(run_dir / JOB_FILE, {"run_id": os.environ["TORCHELASTIC_RUN_ID"]})


def job_run(project: str, task: str) -> Path | None:
    """In a worker torchrun restarted: the run folder its job started (the latest in PROJECT/TASK marked with the
    job's id), to continue from its ``last`` checkpoint, or from the start when it has none. Otherwise None."""
    if not restarted():
        return None
    marked = []
    for marker in Path(project, task).glob(f"*/{JOB_FILE}"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(marker.read_text()).get("run_id") == os.environ.get("TORCHELASTIC_RUN_ID"):
                marked.append(marker)
    return max(marked, key=lambda marker: marker.stat().st_mtime).parent if marked else None


@dataclass
class Group:
    """The workers of one training run. device: this worker's device (cuda:LOCAL_RANK on GPUs)."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that writes the run folder and prints."""
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` in DistributedDataParallel (gradients averaged across ranks during backward), or as is."""
        if self.world == 1:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def shard(self, batch: Any, axes: dict[str, int] | None = None) -> tuple[Any, float]:
        """This rank's rows of a global batch and the weight of its mean loss.

        batch: a dict of tensors; a tensor's batch axis is ``axes[name]`` where the task declares one (its
        ``batch_axes``), else the second of a 3-d tensor (T, B, F) and the first of any other. Rank r gets rows
        [r·B/W, (r+1)·B/W). The weight, n_r·W/B, makes DDP's average of the ranks' weighted mean losses the mean
        over the global batch, so W workers take the same steps as one process. A rank whose share is empty
        (B < W) runs the whole batch with weight 0, keeping every rank in step.
        """
        if self.world == 1:
            return batch, 1.0
        if not isinstance(batch, dict) or not all(isinstance(v, Tensor) for v in batch.values()):
            raise ConfigError("devices>1: this task's batches are not dicts of tensors; train it with devices=1")
        axis = {name: (axes or {}).get(name, 1 if value.ndim == 3 else 0) for name, value in batch.items()}
        sizes = {int(value.shape[axis[name]]) for name, value in batch.items()}
        if len(sizes) != 1:
            raise ConfigError(
                "devices>1: this task's batch tensors disagree on the batch size (batch axis: the second of 3-d "
                "tensors, else the first, unless the task's batch_axes says otherwise); train it with devices=1"
            )
        total = sizes.pop()
        start, stop = self.rank * total // self.world, (self.rank + 1) * total // self.world
        if start == stop:
            return batch, 0.0
        part = {name: value.narrow(axis[name], start, stop - start) for name, value in batch.items()}
        return part, (stop - start) * self.world / total

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, make: Callable[[], Any]) -> Any:
        """``make()`` run on rank 0 and its result given to every rank; a GrukitError it raises is raised on
        every rank (so no rank waits forever for one that failed)."""
        if self.world == 1:
            return make()
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", make())
            except GrukitError as err:
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def join(device: torch.device) -> Iterator[Group]:
    """The group this process belongs to: one of ``world_size()`` workers (initialising the default process
    group from the environment, NCCL on CUDA, else gloo), or a group of one outside a launched job."""
    world = world_size()
    if world == 1:
        yield Group(device=device)
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set but {missing[0]} is not; use torchrun or unset WORLD_SIZE")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"worker {local_rank} has no GPU: torch sees {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # env:// rendezvous, with keys of their own for each torchrun restart: under torchrun the store outlives a
    # failed attempt, and a restarted group that read the dead attempt's addresses would never connect
    store, _, _ = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"grukit/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
    try:
        yield Group(device, rank, world)
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    # A clean exit leaves together: the DDP wrappers (whose reducers hold the group) are freed, and every rank
    # waits at a barrier for rank 0 to finish scoring before the group goes. A worker that tore its group down
    # and exited while its peer still held the connection aborted at exit now and then (gloo threads
    # outliving the interpreter: std::terminate, SIGABRT).
    gc.collect()
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str, entry: Callable[..., Any], args: tuple) -> None:
    """One spawned worker: the launcher's environment, then ``entry(*args)``; rank 0's result (or any rank's
    GrukitError) goes to ``folder`` for the parent."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    try:
        result = entry(*args)
    except GrukitError as err:
        Path(folder, f"error-{rank}.pkl").write_bytes(pickle.dumps(err))
        raise SystemExit(2) from None
    if rank == 0:
        Path(folder, "result.pkl").write_bytes(pickle.dumps(result))


def spawn(entry: Callable[..., Any], args: tuple, devices: int) -> Any:
    """Run ``entry(*args)`` in ``devices`` worker processes of one group on this machine; rank 0's result.

    ``entry`` must be a module-level function (the workers import it). A GrukitError in any worker is raised
    here; any other failure is a bug and comes with the worker's traceback.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="grukit-spawn-") as folder:
        try:
            mp.spawn(_worker, args=(devices, _free_port(), folder, entry, args), nprocs=devices, join=True)
        except mp.ProcessExitedException:
            errors = sorted(Path(folder).glob("error-*.pkl"))
            if errors:
                raise pickle.loads(errors[0].read_bytes()) from None
            raise
        return pickle.loads(Path(folder, "result.pkl").read_bytes())
