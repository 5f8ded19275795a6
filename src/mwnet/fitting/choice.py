"""Which candidate ``fit`` ships: the margin rule on paired validation predictions.

Every candidate is scored on the same validation split, held out of the noisy training
data (its labels as noisy as the training labels; the test set chooses nothing). The
first usable candidate in the preference order is the default; the candidate with the
highest validation accuracy replaces it only when it is ahead by more than the sampling
error of that difference.

The error is the paired one: both models answer the same images, so what varies between
two draws of the split is only how many images one gets right and the other wrong. With
``d_i`` = (best right on image i) - (default right on image i), the difference of the
accuracies is the mean of ``d`` and its standard error is ``std(d) / sqrt(n)``. Models
that agree on most images have a small error, and a real gain of half a point can win;
two models a few images apart never swap places between two CPUs that round differently.
(The suite's unpaired rule, :func:`mwnet.suite.selection.sampling_error`, needs no
predictions and is several times wider when models mostly agree.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mwnet.suite.selection import Margin


def paired_error(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """The standard error, in points, of ``accuracy(b) - accuracy(a)`` measured on the same
    images (``right_*``: booleans, one per image): the sample standard deviation of the
    per-image differences over ``sqrt(n)``; 0 for fewer than two images."""
    a, b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_error needs two equal 1-D arrays, got {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        return 0.0
    d = b.astype(np.float64) - a.astype(np.float64)
    return 100.0 * float(d.std(ddof=1)) / math.sqrt(n)


Choice = Margin
"""How ``fit`` chose: the suite's :class:`~mwnet.suite.selection.Margin` (positions in the
usable candidates' order; ``threshold`` is the paired error here)."""


def rule(choice: Margin, names: Sequence[str]) -> str:
    """One sentence: why the chosen candidate."""
    d, b = names[choice.default], names[choice.best]
    if choice.best == choice.default:
        return f"{d}: the highest validation accuracy"
    if choice.switched:
        return (
            f"{b}: ahead of the default {d} by {choice.margin:.2f} points on validation, "
            f"more than the split's paired sampling error ({choice.threshold:.2f})"
        )
    return (
        f"{d}, the default: {b} is ahead by {choice.margin:.2f} points on validation, "
        f"within the split's paired sampling error ({choice.threshold:.2f})"
    )


def choose(right: Sequence[np.ndarray | None]) -> Margin | None:
    """The margin rule over candidates in preference order; ``right[k]`` is candidate k's
    per-image correctness on the validation split, None where it is not usable (failed,
    diverged, or its weights flagged). None when no candidate is usable."""
    present = [k for k, r in enumerate(right) if r is not None]
    if not present:
        return None
    acc = {k: 100.0 * float(np.mean(right[k])) for k in present}
    default = present[0]
    best = default
    for k in present:
        if acc[k] > acc[best]:
            best = k
    threshold = paired_error(right[default], right[best])  # type: ignore[arg-type]
    return Margin(default, best, acc[best] - acc[default], threshold)
