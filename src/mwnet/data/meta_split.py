"""The clean, balanced meta set carved out of the training set."""

from __future__ import annotations

import numpy as np
import torch

from mwnet.data._validate import LabelsLike, as_label_array, check_seed
from mwnet.data.errors import DataError

SETTINGS = ("noise", "imbalance")


def default_meta_per_class(setting: str, num_classes: int) -> int:
    """Meta images per class in the paper's settings.

    ``"noise"``: 1000 images in all, i.e. ``max(1, 1000 // K)`` per class (CIFAR-10:
    100, CIFAR-100: 10). ``"imbalance"``: 10 per class.
    """
    if num_classes < 1:
        raise DataError(f"num_classes must be positive, got {num_classes}")
    if setting == "noise":
        return max(1, 1000 // num_classes)
    if setting == "imbalance":
        return 10
    raise DataError(f"unknown setting {setting!r}; expected one of {SETTINGS}")


def meta_split(
    labels: LabelsLike, num_classes: int, per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into ``(train_idx, meta_idx)`` with ``per_class`` meta samples per class.

    Call it on the *clean* labels before any corruption or long-tail subsampling: the
    meta set must be trustworthy and balanced. Both index tensors are sorted, disjoint
    and together cover every sample; this is checked, not assumed (the reference code
    could let the two sets overlap).

    Raises:
        DataError: ``per_class`` < 1, or a class has fewer than ``per_class`` samples
            (the class and its count are named).
    """
    check_seed(seed)
    y = as_label_array(labels, num_classes)
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise DataError(f"per_class must be a positive integer, got {per_class!r}")
    rng = np.random.default_rng(int(seed))
    picked = []
    for c in range(int(num_classes)):
        pool = np.flatnonzero(y == c)
        if pool.size < per_class:
            raise DataError(
                f"class {c} has {pool.size} samples, fewer than the {per_class} meta "
                f"samples per class requested"
            )
        picked.append(rng.choice(pool, size=int(per_class), replace=False))
    meta = np.sort(np.concatenate(picked))
    is_meta = np.zeros(y.shape[0], dtype=bool)
    is_meta[meta] = True
    train = np.flatnonzero(~is_meta)
    if np.intersect1d(train, meta).size or train.size + meta.size != y.shape[0]:
        raise RuntimeError("meta_split produced overlapping or incomplete index sets")
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(meta.astype(np.int64))
