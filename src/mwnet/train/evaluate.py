"""Accuracy and per-sample losses of a model over a uint8 set, in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.data import DeviceBatches, Normalize


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize | None,
    device: torch.device,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and per-sample cross-entropy against ``labels`` (on the CPU).

    Runs in eval mode (BatchNorm on running statistics, no dropout) and restores the
    model's previous mode, so it can sit inside a training loop.
    """
    was_training = model.training
    model.eval()
    preds, losses = [], []
    try:
        batches = DeviceBatches(
            images, labels, batch_size, device, shuffle=False, normalize=normalize
        )
        for x, y in batches:
            logits = model(x)
            preds.append(logits.argmax(1).cpu())
            losses.append(F.cross_entropy(logits.float(), y, reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(preds), torch.cat(losses)


def accuracy(
    pred: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> float | None:
    """Percent correct, over ``mask`` if given; None when the mask selects nothing."""
    if mask is not None:
        pred, labels = pred[mask], labels[mask]
    if len(labels) == 0:
        return None
    return 100.0 * float((pred == labels).float().mean())
