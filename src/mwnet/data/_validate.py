"""Argument checks shared by the pure label functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mwnet.data.errors import DataError

LabelsLike = torch.Tensor | np.ndarray | Sequence[int]


def as_label_array(labels: LabelsLike, num_classes: int | None = None) -> np.ndarray:
    """Return ``labels`` as a 1-d int64 numpy array, checking range when asked."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be 1-d, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None:
        check_num_classes(num_classes)
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise DataError(
                f"labels out of range: expected values in [0, {num_classes}), "
                f"got [{arr.min()}, {arr.max()}]"
            )
    return arr


def check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")


def check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
