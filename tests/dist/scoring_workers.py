"""Scoring the whole training set on W ranks, run in spawned processes (importable by name)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from dist_workers import join_gloo
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.distributed import DataParallel
from mwnet.train.pseudo_meta_set import score_training_set

SAMPLES, CLASSES = 101, 4  # not a multiple of the ranks: uneven shards


def scoring_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A conv net and uint8 images with labels, the same in every process."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)
    )
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (SAMPLES, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    return model, images, labels


def score_here(parallel: DataParallel | None) -> torch.Tensor:
    model, images, labels = scoring_case()
    device = torch.device("cpu")
    return score_training_set(model, images, labels, None, device, 16, parallel)


def run_rank(rank: int, world: int, store: str, out_dir: str) -> None:
    join_gloo(rank, world, store)
    try:
        parallel = DataParallel(rank, world, 0, torch.device("cpu"), "gloo", GradientReducer())
        scores = score_here(parallel)
        dist.barrier()  # no rank leaves while a peer still receives its last rows
    finally:
        dist.destroy_process_group()
    torch.save(scores, Path(out_dir) / f"scores{rank}.pt")
