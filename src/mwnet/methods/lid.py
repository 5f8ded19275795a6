"""Local intrinsic dimensionality and the rules D2L derives from its history.

Pure functions, so each can be checked against a hand computation: the maximum-likelihood
LID estimate of Amsaleg et al. (2015), as Ma et al. (2018) apply it to a network's deep
representation; the turning point at which that dimensionality starts to rise (the network
begins to memorise); and the weight D2L then gives the given labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

LOG_OFFSET = 1e-8
"""Added to each distance ratio inside the log, as in the authors' ``mle_batch``: the
farthest neighbour's own ratio is 1, whose log would otherwise be exactly 0."""


def mle_lid(points: torch.Tensor, k: int) -> torch.Tensor:
    """Each point's LID among ``points`` (n, d), from its ``k`` nearest other points:

        LID(x) = −k / Σ_{j=1..k} log(r_j / r_k + 1e-8),   r_1 ≤ … ≤ r_k

    the distances to its nearest neighbours, itself excluded. With fewer than k + 1 points
    every other point is a neighbour (k = n − 1, as the authors do); a lone point has no
    estimate (an empty result for it is left out: the authors' NaN would spoil the mean).
    Distances are computed directly, not through the matrix-product expansion, which loses
    the small ones to cancellation. Returns (n,) in ``points``' dtype.
    """
    n = points.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        return points.new_empty((0,))
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.sort(dim=1).values[:, 1 : k + 1]
    return -k / torch.log(nearest / nearest[:, -1:] + LOG_OFFSET).sum(dim=1)


def mean_lid(features: torch.Tensor, k: int, batch: int) -> float:
    """The mean LID of ``features`` (n, d), each point's neighbours taken within its batch
    of ``batch`` consecutive rows (the authors' ``get_lids_random_batch``: the rows are a
    random subset, so a batch is a random sample of the representation)."""
    if batch < 2:
        raise ValueError(f"d2l: batch (method.d2l.batch) must be >= 2, got {batch}")
    parts = [mle_lid(part, k) for part in features.split(batch)]
    every = torch.cat(parts) if parts else features.new_empty((0,))
    return float(every.mean()) if len(every) else float("nan")


def turning_point(lids: Sequence[float], init_epoch: int, window: int) -> bool:
    """Whether the last LID of ``lids`` (one per epoch so far) marks the turning point:
    with more than ``init_epoch + window`` values, it exceeds the mean of the ``window``
    values before it by more than twice their (population) standard deviation — the
    authors' ``found_turning_point``. Until then the network is still compressing its
    representation (LID falls); a rise means it has begun to fit the noise."""
    if len(lids) <= init_epoch + window:
        return False
    before = np.asarray(lids[-window - 1 : -1], dtype=np.float64)
    return bool(lids[-1] - before.mean() > 2 * before.std())


def lid_alpha(epoch: int, epochs: int, lids: Sequence[float]) -> float:
    """The weight of the given label from the turning point on (the authors'
    ``update_learning_pace``): α = exp(−(i / T) · LID_i / min_{j ≤ i} LID_j), i the epoch
    (from 0), T the run's epochs. It falls as training advances and as the dimensionality
    expands past its minimum, handing the target over to the network's own prediction."""
    expansion = lids[-1] / min(lids)
    return math.exp(-(epoch / epochs) * expansion)
