"""The training loop's evaluation passes on W ranks, in spawned processes (importable by
name): each rank builds the run's experiment, loads the same model, evaluates once and
saves the scores with the number of samples its model saw."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from dist_workers import join_gloo

from mwnet.core.reducer import GradientReducer
from mwnet.distributed import DataParallel
from mwnet.train import loop
from mwnet.train.config import load_config


def evaluate_here(overrides: list[str], model_file: str, parallel: DataParallel | None) -> dict:
    """The loop's evaluation of the saved model on this process, and how many samples
    went through the model here."""
    cfg = load_config(None, overrides)
    trainer = loop.Trainer(loop.build_experiment(cfg, parallel=parallel), Path("."), True, parallel)
    model = trainer.exp.model
    model.load_state_dict(torch.load(model_file))
    seen = [0]
    hook = model.register_forward_hook(
        lambda _m, args, _o: seen.__setitem__(0, seen[0] + len(args[0]))
    )
    try:
        scores = trainer.evaluate()
    finally:
        hook.remove()
    return {"scores": scores, "seen": seen[0], "val": len(trainer.exp.data.val_labels)}


def run_rank(rank: int, world: int, store: str, overrides: list[str], model_file: str, out: str):
    join_gloo(rank, world, store)
    try:
        parallel = DataParallel(rank, world, 0, torch.device("cpu"), "gloo", GradientReducer())
        result = evaluate_here(overrides, model_file, parallel)
        dist.barrier()  # no rank leaves while a peer still receives its last rows
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")
