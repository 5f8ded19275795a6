"""How well a score finds wrong labels, when the truth is known (synthetic noise).

Used to report a detector's quality, never to choose flags: a run on real data has no
truth to compare with.
"""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positives`` (Mann-Whitney U, ties
    counted as half); None when one class is empty."""
    positives = np.asarray(positives).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall(flagged: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """Share of flagged samples that are positive, and of positives that are flagged
    (0.0 where the denominator is empty)."""
    flagged, positives = np.asarray(flagged, bool), np.asarray(positives, bool)
    hits = int((flagged & positives).sum())
    return hits / max(int(flagged.sum()), 1), hits / max(int(positives.sum()), 1)


def precision_at_k(suspicion_order: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of positives among the first ``k`` samples of ``suspicion_order`` (most
    suspicious first)."""
    if k <= 0:
        return 0.0
    return float(np.asarray(positives, bool)[np.asarray(suspicion_order)[:k]].mean())
