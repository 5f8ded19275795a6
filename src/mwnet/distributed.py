"""Data-parallel training under torchrun: the process group, batch shards, and failures.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device, on one
machine or several, and tells each its place through environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`start` joins
those processes into one ``torch.distributed`` process group; the gradients of the
algorithm are then summed by :class:`mwnet.core.reducer.GradientReducer`.

Every rank builds the same data iterators with the same seeds and so draws the same global
batches; each rank then trains on its contiguous shard of every batch
(:meth:`DataParallel.shard`). Iterator state is therefore global, which is what lets a
run be resumed on a different number of ranks.

A rank that dies makes the others' next collective fail at once (the connection closes);
a rank that hangs makes them fail after ``timeout`` seconds, the process group's limit on
any collective. torchrun then stops the remaining ranks. :func:`lost_contact` recognises
those errors so the command line can say what happened instead of printing a traceback.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mwnet.core.reducer import GradientReducer

BACKENDS: tuple[str, ...] = ("auto", "nccl", "gloo")
DEFAULT_TIMEOUT_S = 300.0
"""How long a rank waits for the others in one collective before failing: long enough for
rank 0 to write a large checkpoint or draw the plots while the others wait, short enough
that a hung job ends within minutes."""


def launched_with_several_ranks() -> bool:
    """True inside a job of two or more processes started by torchrun (or an equivalent)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank`` on its machine, for ``device=name``.

    ``auto`` and ``cuda`` give each rank its own GPU, ``cuda:<local rank>``; ``cpu`` keeps
    every rank on the CPU. A fixed ``cuda:N`` would put every rank on the same GPU, so it
    is refused.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ValueError(
            f"device={name} would put every rank on the same device; use device=cuda (each "
            "rank takes the GPU of its local rank) or device=cpu"
        )
    if not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available here; use device=cpu or auto")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"local rank {local_rank} has no GPU: this machine has "
            f"{torch.cuda.device_count()}; start at most that many processes per node "
            "(torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def choose_backend(backend: str, device: torch.device) -> str:
    """``auto``: nccl for GPUs, gloo for the CPU; an explicit choice is checked."""
    if backend not in BACKENDS:
        raise ValueError(f"distributed.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            "distributed.backend=nccl needs CUDA devices; use distributed.backend=gloo (or "
            "auto) for training on the CPU"
        )
    return backend


@dataclass
class DataParallel:
    """This process's place in a data-parallel job, and the collectives the loop needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    reducer: GradientReducer

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory and prints."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch (sizes differ by at most one)."""
        return batch.tensor_split(self.world_size)[self.rank]

    def shard_sizes(self, total: int) -> list[int]:
        """The sizes :meth:`shard` gives every rank for a batch of ``total`` rows."""
        base, extra = divmod(total, self.world_size)
        return [base + 1 if r < extra else base for r in range(self.world_size)]

    def gather(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """The global batch's rows from every rank's shard ``local`` (inverse of
        :meth:`shard`), on every rank; one all-gather."""
        sizes = self.shard_sizes(total)
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        self.reducer.counter.add("logging", padded)
        dist.all_gather(parts, padded, group=self.reducer.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers over ranks (BatchNorm running statistics).

        With per-rank BatchNorm each rank's running statistics follow its own shards; the
        average estimates the global batch's and makes evaluation and checkpoints identical
        on every rank. Integer buffers (batch counters) are equal on all ranks already.
        """
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        summed = self.reducer.sum(buffers, "buffers")
        with torch.no_grad():
            for b, s in zip(buffers, summed, strict=True):
                b.copy_(s / self.world_size)

    def barrier(self) -> None:
        dist.barrier(group=self.reducer.group)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.reducer.group)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def start(device: str, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT_S) -> DataParallel:
    """Join the job torchrun started: one process group over all its ranks.

    Args:
        device: the ``device`` config value, resolved per rank by :func:`rank_device`.
        backend: ``auto`` (nccl on GPUs, gloo on the CPU), ``nccl`` or ``gloo``.
        timeout: seconds any collective may wait for the other ranks before it fails.
    """
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise ValueError(
            f"data-parallel training needs the environment torchrun sets; {', '.join(missing)} "
            "missing. Start with: torchrun --nproc_per_node=N -m mwnet train ..."
        )
    if not timeout > 0:
        raise ValueError(f"distributed.timeout must be > 0 seconds, got {timeout}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = rank_device(device, local_rank)
    chosen = choose_backend(backend, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        chosen,
        timeout=datetime.timedelta(seconds=timeout),
        rank=rank,
        world_size=world,
        device_id=dev if chosen == "nccl" else None,
    )
    return DataParallel(rank, world, local_rank, dev, chosen, GradientReducer())


class ShardedStream:
    """An endless stream of ``(x, y)`` global batches, yielding this rank's shards.

    The underlying iterator (and its state, saved in checkpoints) stays global.
    """

    def __init__(self, batches: Iterator[tuple[torch.Tensor, ...]], parallel: DataParallel):
        self.batches = batches
        self.parallel = parallel

    def __iter__(self) -> ShardedStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.parallel.shard(t) for t in next(self.batches))


_LOST = re.compile(r"gloo|nccl|c10d|connection (closed|reset)|timed out|timeout", re.IGNORECASE)


def lost_contact(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank died or hung."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and bool(_LOST.search(str(err)))


@dataclass(frozen=True)
class FaultHook:
    """Test hook, read from the environment: makes one rank fail at a given step.

    ``MWNET_TEST_FAULT=exit`` ends the process at once with status 1 (as a crash would),
    ``MWNET_TEST_FAULT=hang`` makes it stop responding, in the rank ``MWNET_TEST_FAULT_RANK``
    (default 1) just before training step ``MWNET_TEST_FAULT_STEP`` (counted from 0 over the
    whole run, default 0). The tests use it to check that the other ranks end with a clear
    error in bounded time. Never set it otherwise.
    """

    kind: str
    rank: int
    step: int

    @classmethod
    def from_env(cls) -> FaultHook | None:
        kind = os.environ.get("MWNET_TEST_FAULT")
        if not kind:
            return None
        if kind not in ("exit", "hang"):
            raise ValueError(f"MWNET_TEST_FAULT must be exit or hang, got {kind!r}")
        rank = int(os.environ.get("MWNET_TEST_FAULT_RANK", "1"))
        return cls(kind, rank, int(os.environ.get("MWNET_TEST_FAULT_STEP", "0")))

    def at(self, rank: int, step: int) -> None:
        """Fail here if this is the configured rank and step."""
        if rank != self.rank or step != self.step:
            return
        if self.kind == "exit":
            os._exit(1)
        while True:
            time.sleep(60)
