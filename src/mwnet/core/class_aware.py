"""CMW-Net's class-aware weighting net: one loss-to-weight curve per group of classes.

CMW-Net (Shu et al., TPAMI 2023) groups the classes by how many training samples carry
their (observed) label and gives each group its own head on a shared trunk, so large and
small classes can learn different weighting curves: a long tail wants small classes'
high losses kept, label noise wants high losses dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.weight_inputs import (
    DEFAULT_DECAY,
    DEFAULT_HISTORY,
    LOSS_ONLY,
    check_inputs,
    describe,
    input_matrix,
    input_width,
)
from mwnet.core.weight_net import dynamics_decay_of, history_of


def cluster_by_count(counts: Sequence[int] | torch.Tensor, clusters: int = 3) -> torch.Tensor:
    """Group classes by their sample counts: optimal 1-D k-means, largest classes first.

    Returns the cluster of each class, shape ``(C,)``, int64. Cluster 0 holds the largest
    classes and the last one the smallest, so a cluster means the same thing (head,
    middle, tail) in every run. The clustering is the exact minimiser of the within-cluster
    sum of squares (dynamic programming over the sorted distinct counts, Wang & Song 2011),
    not a seeded Lloyd's run, so it is deterministic. Classes with equal counts always
    share a cluster; when there are fewer distinct counts than ``clusters``, there are
    only as many clusters as distinct counts (balanced data: one cluster, i.e. MW-Net).
    """
    values = _as_counts(counts)
    if not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be an integer >= 1, got {clusters!r}")
    distinct, inverse, multiplicity = np.unique(values, return_inverse=True, return_counts=True)
    k = min(clusters, len(distinct))
    starts = _optimal_segments(distinct.astype(np.float64), multiplicity.astype(np.float64), k)
    segment_of_distinct = np.searchsorted(starts, np.arange(len(distinct)), side="right") - 1
    largest_first = (k - 1) - segment_of_distinct  # ascending segments -> cluster 0 largest
    return torch.from_numpy(largest_first[inverse].astype(np.int64))


def _as_counts(counts: Sequence[int] | torch.Tensor) -> np.ndarray:
    values = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"class counts must be a non-empty 1-D sequence (one count per class), "
            f"got shape {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.number) or (values < 0).any():
        raise ValueError("class counts must be non-negative numbers")
    return values


def _optimal_segments(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Start indices of the k contiguous segments of sorted ``values`` (with multiplicities
    ``weights``) that minimise the weighted within-segment sum of squares."""
    n = len(values)
    w = np.concatenate([[0.0], np.cumsum(weights)])
    s = np.concatenate([[0.0], np.cumsum(weights * values)])
    q = np.concatenate([[0.0], np.cumsum(weights * values**2)])

    def cost(i: np.ndarray, j: np.ndarray | int) -> np.ndarray:  # segments values[i..j]
        total, first = w[j + 1] - w[i], s[j + 1] - s[i]
        return q[j + 1] - q[i] - first**2 / total

    best = np.full((k, n), np.inf)
    start = np.zeros((k, n), dtype=np.int64)
    best[0] = cost(np.zeros(n, dtype=np.int64), np.arange(n))
    for m in range(1, k):
        for j in range(m, n):
            i = np.arange(m, j + 1)  # the last segment is values[i..j]
            total = best[m - 1, i - 1] + cost(i, j)
            pick = int(np.argmin(total))
            best[m, j], start[m, j] = total[pick], i[pick]
    starts, j = [], n - 1
    for m in range(k - 1, -1, -1):
        i = int(start[m, j]) if m > 0 else 0
        starts.append(i)
        j = i - 1
    return np.array(starts[::-1])


class ClassAwareWeightNet(nn.Module):
    """CMW-Net's weighting net: a shared trunk and one sigmoid head per class cluster.

    ``v_i = sigmoid(head[c(y_i)](relu(trunk(L_i))))`` with ``c`` the cluster of the
    sample's observed label (:func:`cluster_by_count` on ``class_counts``). All heads are
    evaluated as one ``K``-output linear layer and each sample's column is gathered, so a
    batch costs one small matmul, not a loop over samples. With one cluster (``clusters=1``,
    or balanced data) it is :class:`~mwnet.WeightNet`'s 1-hidden-100-1 map, to the bit;
    built under the same seed it also starts from the same parameters.

    It takes labels (``takes_labels = True``): :class:`~mwnet.MetaReweighter` then calls it
    as ``net(losses, labels)`` with losses of shape ``(n, 1)`` and labels ``(n,)``. Labels
    are not range-checked here (that would cost a host sync per call); the reweighter's
    ``checks`` validate them against the model's output first.

    Args:
        class_counts: training samples per class, counted on the labels the model trains
            on (observed, possibly noisy), shape ``(C,)``.
        clusters: the number of class groups ``K`` (CMW-Net: 3); fewer if there are fewer
            distinct counts.
        hidden: width of the trunk.
        inputs, dynamics_decay, history: what the trunk reads about each sample, as for
            :class:`~mwnet.WeightNet` (default the loss alone, CMW-Net's net); the one-hot
            ``class`` input has one column per class of ``class_counts``.

    The class-to-cluster map and the counts are buffers: they travel with the state dict,
    so a saved net applies the groups it was trained with.
    """

    takes_labels = True

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        clusters: int = 3,
        hidden: int = 100,
        *,
        inputs: Sequence[str] = LOSS_ONLY,
        dynamics_decay: float | None = DEFAULT_DECAY,
        history: int | None = DEFAULT_HISTORY,
    ) -> None:
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"ClassAwareWeightNet hidden width must be >= 1, got {hidden!r}")
        cluster_of_class = cluster_by_count(class_counts, clusters)
        self.clusters = clusters
        self.hidden = hidden
        self.inputs = check_inputs(inputs)
        self.dynamics_decay = dynamics_decay_of(self.inputs, dynamics_decay)
        self.history = history_of(self.inputs, history)
        self.width = input_width(self.inputs, len(cluster_of_class), self.history)
        self.register_buffer("class_counts", torch.as_tensor(_as_counts(class_counts)).long())
        self.register_buffer("cluster_of_class", cluster_of_class)
        self.trunk = nn.Linear(self.width, hidden)
        self.heads = nn.Linear(hidden, self.num_clusters)  # row k is cluster k's head

    @property
    def num_classes(self) -> int:
        return int(self.cluster_of_class.numel())

    @property
    def num_clusters(self) -> int:
        """The number of heads actually built (at most ``clusters``)."""
        return int(self.cluster_of_class.max()) + 1

    def curves(self, losses: torch.Tensor) -> torch.Tensor:
        """Every cluster's weight for each loss, shape ``(n, K)``: the learned curves (of a
        loss-only net; with more inputs, every cluster's weight for each row of inputs)."""
        column = losses.reshape(-1, 1) if self.width == 1 else losses
        hidden = F.relu(self.trunk(column))
        return torch.sigmoid(self.heads(hidden))

    def forward(self, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        input_matrix(losses, self.inputs, self.width, "ClassAwareWeightNet")  # checks the shape
        n = losses.shape[0]
        if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"ClassAwareWeightNet needs one integer label per loss, shape ({n},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        cluster = self.cluster_of_class[labels]
        weights = self.curves(losses).gather(1, cluster.reshape(-1, 1))
        return weights if losses.dim() == 2 else weights.squeeze(1)

    def extra_repr(self) -> str:
        extra = ""
        if self.inputs != LOSS_ONLY:
            extra = f", inputs: {describe(self.inputs, self.num_classes, self.history)}"
            if self.dynamics_decay is not None:
                extra += f", dynamics_decay={self.dynamics_decay}"
        return (
            f"classes={self.num_classes}, clusters={self.num_clusters} (asked {self.clusters}), "
            f"hidden={self.hidden}{extra}"
        )
