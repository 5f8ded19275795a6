"""ELR's training loop on spawned gloo ranks, each rank's target table kept (rank 0 alone
writes the checkpoint, so the other ranks' tables can only be seen from inside)."""

from __future__ import annotations

from pathlib import Path

import torch
from dist_workers import _spawn, join_gloo

from mwnet.core.reducer import GradientReducer
from mwnet.distributed import DataParallel
from mwnet.train import loop
from mwnet.train.config import load_config


def run_elr_rank(rank: int, world: int, store: str, overrides: list[str], out_dir: str) -> None:
    """One spawned rank of ``mwnet train`` with ``overrides``: its final target table and
    model, and the bytes its reducer sent per category."""
    join_gloo(rank, world, store)
    parallel = DataParallel(rank, world, 0, torch.device("cpu"), "gloo", GradientReducer())
    try:
        trainer, _ = loop.start(load_config(None, overrides), quiet=True, parallel=parallel)
        trainer.fit()
        method = trainer.exp.method
        result = {
            "targets": method.targets.clone(),
            "model": {k: v.clone() for k, v in trainer.exp.model.state_dict().items()},
            "bytes": dict(parallel.reducer.counter.bytes),
        }
    finally:
        parallel.close()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_elr_on_ranks(overrides: list[str], world: int, tmp: Path, timeout: float = 120):
    """:func:`run_elr_rank` on ``world`` spawned ranks; its results per rank."""
    return _spawn(run_elr_rank, (overrides,), world, tmp, timeout)
