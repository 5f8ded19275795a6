"""A validation split held out of the (noisy) training data, for model selection.

Choosing a learning rate or a method's hyperparameter by test accuracy reports the test
set's best case, not what a user would get. What a user has is their own labelled data,
noise and all; so the validation split is carved from the training set *after* the
labels are corrupted and carries the observed labels. Accuracy on it measures how well a
model agrees with noisy labels, which ranks models the way clean accuracy does whenever
the noise is not the model's own bias (for uniform noise it is an affine function of the
clean accuracy), at a lower resolution.

The draw depends only on the run's seed and the number of samples, never on the method,
so every method trained under the same seed and data settings holds out the same samples.
"""

from __future__ import annotations

import numpy as np
import torch

from mwnet.data._validate import check_seed
from mwnet.data.errors import DataError

VAL_STREAM = 0x76616C
"""Mixed into the seed, so the validation draw is independent of the meta split, the long
tail and the subset, which use the seed alone."""


def val_split(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..n-1`` into ``(train_pos, val_pos)`` with ``size`` held out.

    Uniform without replacement under ``seed``; both results are sorted, disjoint and
    together cover every position.

    Raises:
        DataError: ``size`` is negative or leaves nothing to train on.
    """
    check_seed(seed)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
        raise DataError(f"validation size must be a non-negative integer, got {size!r}")
    if size >= n:
        raise DataError(
            f"a validation split of {size} samples leaves nothing of the {n} training samples "
            "to train on"
        )
    rng = np.random.default_rng([int(seed), VAL_STREAM])
    val = np.sort(rng.choice(n, size=int(size), replace=False))
    held = np.zeros(n, dtype=bool)
    held[val] = True
    train = np.flatnonzero(~held)
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))
