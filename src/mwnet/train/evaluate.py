"""Per-sample outputs of a model over a uint8 set, in eval mode, sharded over ranks.

Every pass over a whole set (test accuracy, the training set's per-sample signals, the
pseudo-meta scores) goes through :func:`per_sample`: one forward per batch, a reduction of
the logits to a few numbers per sample, and under data parallelism each rank computing its
contiguous shard, gathered with one all-gather so that every rank ends with the whole
table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.data import DeviceBatches, Normalize
from mwnet.distributed import DataParallel

Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits (b, K), labels (b,)) -> per-sample columns (b, c)."""


def prediction_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Columns: predicted class, cross-entropy against ``labels``."""
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return torch.stack([logits.argmax(1).to(loss.dtype), loss], 1)


@torch.no_grad()
def _local(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize | None,
    device: torch.device,
    batch_size: int,
    reduce: Reduction,
) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    parts = []
    try:
        batches = DeviceBatches(
            images, labels, batch_size, device, shuffle=False, normalize=normalize
        )
        for x, y in batches:
            parts.append(reduce(model(x), y).double())
    finally:
        model.train(was_training)
    return parts


def per_sample(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize | None,
    device: torch.device,
    batch_size: int,
    reduce: Reduction = prediction_and_loss,
    parallel: DataParallel | None = None,
) -> torch.Tensor:
    """``reduce(logits, labels)`` for every sample, as one float64 (n, c) table on the CPU.

    Runs in eval mode (BatchNorm on running statistics, no dropout) and restores the
    model's previous mode, so it can sit inside a training loop. With ``parallel`` each
    rank runs its contiguous shard and every rank gets the whole table.
    """
    n = len(labels)
    part = slice(0, n)
    if parallel is not None:
        sizes = parallel.shard_sizes(n)
        start = sum(sizes[: parallel.rank])
        part = slice(start, start + sizes[parallel.rank])
    rows = _local(model, images[part], labels[part], normalize, device, batch_size, reduce)
    if parallel is None:
        return torch.cat(rows).cpu()
    width = rows[0].shape[1] if rows else _width(reduce, labels, device)
    local = torch.cat(rows) if rows else torch.empty((0, width), dtype=torch.float64, device=device)
    return parallel.gather(local.to(parallel.device), n).cpu()


def _width(reduce: Reduction, labels: torch.Tensor, device: torch.device) -> int:
    """Columns ``reduce`` gives, for a rank whose shard is empty (more ranks than samples)."""
    k = int(labels.max()) + 1 if len(labels) else 1
    return reduce(
        torch.zeros((1, k), device=device), torch.zeros(1, dtype=torch.long, device=device)
    ).shape[1]


def predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize | None,
    device: torch.device,
    batch_size: int = 500,
    parallel: DataParallel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and per-sample cross-entropy against ``labels`` (on the CPU)."""
    table = per_sample(model, images, labels, normalize, device, batch_size, parallel=parallel)
    return table[:, 0].long(), table[:, 1].float()


def accuracy(
    pred: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> float | None:
    """Percent correct, over ``mask`` if given; None when the mask selects nothing."""
    if mask is not None:
        pred, labels = pred[mask], labels[mask]
    if len(labels) == 0:
        return None
    return 100.0 * float((pred == labels).float().mean())
