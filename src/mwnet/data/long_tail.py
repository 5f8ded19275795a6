"""Long-tailed subsampling of a balanced training set (class 0 is the head)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mwnet.data._validate import LabelsLike, as_label_array, check_num_classes, check_seed
from mwnet.data.errors import DataError

PROFILES = ("exp", "step")


def long_tail_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp"
) -> list[int]:
    """Per-class sample counts of a long-tailed set, head class first.

    ``exp``: ``n_c = int(n_max * (1/IF) ** (c / (K - 1)))``, the paper's profile; for
    CIFAR-10 with ``n_max=4990`` (5000 minus the 10 meta images) and ``IF=100`` this
    gives 4990 ... 49, 12,380 in all. ``step``: the first ``ceil(K/2)`` classes keep
    ``n_max``, the rest get ``int(n_max / IF)``.

    The imbalance factor is the ratio of the largest to the smallest class before
    rounding, so ``IF=1`` leaves the set balanced.
    """
    check_num_classes(num_classes)
    if not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise DataError(f"n_max must be a positive integer, got {n_max!r}")
    if not imbalance_factor >= 1:
        raise DataError(f"imbalance_factor must be >= 1, got {imbalance_factor!r}")
    k = int(num_classes)
    if profile == "exp":
        if k == 1:
            return [int(n_max)]
        return [int(n_max * (1.0 / imbalance_factor) ** (c / (k - 1))) for c in range(k)]
    if profile == "step":
        head = (k + 1) // 2
        return [int(n_max)] * head + [int(n_max / imbalance_factor)] * (k - head)
    raise DataError(f"unknown long-tail profile {profile!r}; expected one of {PROFILES}")


def long_tail_indices(labels: LabelsLike, counts: Sequence[int], seed: int) -> torch.Tensor:
    """Pick ``counts[c]`` random samples of each class ``c``; return sorted indices.

    Indices are positions in ``labels``. To subsample the training part left by
    :func:`mwnet.data.meta_split`, pass ``labels[train_idx]`` and map the result back
    with ``train_idx[result]``.

    Raises:
        DataError: a class has fewer samples than requested (class and counts named), a
            negative count, or labels outside ``[0, len(counts))``.
    """
    check_seed(seed)
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise DataError(f"counts must be non-negative, got {counts}")
    y = as_label_array(labels, len(counts))
    rng = np.random.default_rng(int(seed))
    chosen = []
    for c, want in enumerate(counts):
        pool = np.flatnonzero(y == c)
        if pool.size < want:
            raise DataError(f"class {c} has {pool.size} samples, fewer than the {want} requested")
        chosen.append(rng.choice(pool, size=want, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))
