"""A pseudo-meta set chosen from the noisy training set itself, for training without clean data.

CMW-Net-SL has no clean meta set. Instead, at the start of every epoch after warm-up, a
scorer (the EMA teacher, in eval mode) computes every training sample's loss on its
*observed* label, and for each observed class the ``per_class`` lowest-loss samples
form the meta set, kept with their observed labels. Small loss is the usual sign of a
correct label, so the set is mostly clean, but not certainly:
:func:`pseudo_meta_precision` measures how clean it is when the true labels are known.

The selection is a pure function of ``(scores, labels, per_class, num_classes)``: equal
scores are broken by the smaller index, so two runs, or a resumed run, pick the same
set. Samples are ordered by ``(label, score, index)`` with two stable sorts and no loop
over samples or classes, so a million samples take a fraction of a second.

A class with fewer than ``per_class`` samples gives all of them and a class with none
gives nothing; both are recorded in :class:`PseudoMeta` rather than raised, because
heavy noise can legitimately drain a class of its observed samples, and the run should
go on and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mwnet.data._validate import LabelsLike, as_label_array, check_num_classes
from mwnet.data.errors import DataError

ScoresLike = torch.Tensor | np.ndarray | Sequence[float]


@dataclass(frozen=True, eq=False)
class PseudoMeta:
    """The chosen pseudo-meta samples and how each class fared.

    Attributes:
        indices: positions of the chosen samples, sorted, ``int64`` ``(M,)``, on the CPU.
        counts: samples chosen per class, ``int64`` ``(K,)``; ``min(per_class, size)``.
        class_sizes: samples per observed class in the scored set, ``int64`` ``(K,)``.
        short_classes: classes with at least one but fewer than ``per_class`` samples;
            all of their samples were taken.
        empty_classes: classes with no sample at all; the meta set has none of them.
        per_class: the number requested per class.
    """

    indices: torch.Tensor
    counts: torch.Tensor
    class_sizes: torch.Tensor
    short_classes: tuple[int, ...]
    empty_classes: tuple[int, ...]
    per_class: int

    @property
    def complete(self) -> bool:
        """Whether every class gave the full ``per_class`` samples."""
        return not self.short_classes and not self.empty_classes

    def describe(self) -> str:
        """One line for a log: the size, and any class that fell short."""
        parts = [
            f"pseudo-meta set: {self.indices.numel()} samples, {self.per_class} per class "
            f"over {self.counts.numel()} classes"
        ]
        if self.short_classes:
            short = ", ".join(f"{c} ({int(self.class_sizes[c])})" for c in self.short_classes)
            parts.append(f"fewer than {self.per_class} samples, all taken: class {short}")
        if self.empty_classes:
            empty = ", ".join(str(c) for c in self.empty_classes)
            parts.append(f"no samples: class {empty}")
        return "; ".join(parts)


def select_pseudo_meta(
    scores: ScoresLike, labels: LabelsLike, per_class: int, num_classes: int
) -> PseudoMeta:
    """Pick, for each observed class, the ``per_class`` samples with the lowest score.

    Args:
        scores: one number per sample, lower meaning more trustworthy: normally the
            scorer's cross-entropy on the observed label. Any float dtype, any device;
            ``±inf`` is ordered as usual, NaN is an error.
        labels: the observed (possibly noisy) label of each sample, in
            ``[0, num_classes)``; these define the classes, never the true labels.
        per_class: samples wanted per class (the authors use 10).
        num_classes: ``K``; classes without samples are reported, not skipped silently.

    Returns:
        A :class:`PseudoMeta`. Among samples of one class, every chosen sample scores at
        most every unchosen one, and equal scores go to the smaller index. The work is
        done on the CPU, so the choice does not depend on where the scores were computed.

    Raises:
        DataError: ``scores`` not 1-d or not floating point, a length mismatch with
            ``labels``, NaN scores (their count and the first index are named),
            ``per_class`` < 1, or labels outside ``[0, num_classes)``.
    """
    check_num_classes(num_classes)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)):
        raise DataError(f"per_class must be a positive integer, got {per_class!r}")
    if per_class < 1:
        raise DataError(f"per_class must be a positive integer, got {per_class!r}")
    s = _as_score_tensor(scores)
    y_np = as_label_array(labels, num_classes)
    if y_np.shape[0] != s.shape[0]:
        raise DataError(
            f"scores and labels must have one entry per sample, got {s.shape[0]} scores and "
            f"{y_np.shape[0]} labels; pass the scores of exactly the labelled samples"
        )
    nan = torch.isnan(s)
    n_nan = int(nan.sum())
    if n_nan:
        first = int(nan.nonzero()[0, 0])
        raise DataError(
            f"scores contain {n_nan} NaN value(s) (first at index {first}); a NaN loss means "
            "the scorer diverged or was fed bad inputs: fix the scorer before selecting"
        )
    k, m = int(num_classes), int(per_class)
    y = torch.from_numpy(y_np)

    # Sorting by score first and then, stably, by label orders samples by
    # (label, score, index): stability keeps ascending index among equal scores.
    by_score = torch.sort(s, stable=True).indices
    order = by_score[torch.sort(y[by_score], stable=True).indices]
    class_sizes = torch.bincount(y, minlength=k)
    starts = torch.cumsum(class_sizes, 0) - class_sizes
    rank = torch.arange(y.numel()) - starts[y[order]]
    indices = torch.sort(order[rank < m]).values

    counts = torch.clamp(class_sizes, max=m)
    sizes = class_sizes.tolist()
    return PseudoMeta(
        indices=indices,
        counts=counts,
        class_sizes=class_sizes,
        short_classes=tuple(c for c, n in enumerate(sizes) if 0 < n < m),
        empty_classes=tuple(c for c, n in enumerate(sizes) if n == 0),
        per_class=m,
    )


def pseudo_meta_precision(
    indices: torch.Tensor | np.ndarray | Sequence[int],
    observed: LabelsLike,
    true: LabelsLike | None,
) -> float | None:
    """Fraction of the chosen samples whose observed label is the true one.

    This is how clean the pseudo-meta set really is, worth logging when the true
    labels are known (synthetic noise). ``observed`` and ``true`` are the labels of the
    whole training set and ``indices`` positions in it, as returned by
    :func:`select_pseudo_meta`.

    Returns:
        The precision in ``[0, 1]``, or ``None`` when ``true`` is ``None`` (real noisy
        data, truth unknown) or nothing was chosen (no fraction to report).

    Raises:
        DataError: ``observed`` and ``true`` differ in length, ``indices`` are not 1-d
            integers, or an index falls outside the training set.
    """
    if true is None:
        return None
    obs = as_label_array(observed)
    tru = as_label_array(true)
    if obs.shape != tru.shape:
        raise DataError(
            f"observed and true labels must cover the same samples, got {obs.shape[0]} and "
            f"{tru.shape[0]}; pass both label arrays of the whole training set"
        )
    idx = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else indices
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise DataError(
            f"indices must be a 1-d integer array, got shape {idx.shape} and dtype {idx.dtype}"
        )
    if idx.size == 0:
        return None
    if idx.min() < 0 or idx.max() >= obs.shape[0]:
        raise DataError(
            f"indices out of range: expected positions in [0, {obs.shape[0]}), got "
            f"[{idx.min()}, {idx.max()}]; pass indices into the same training set"
        )
    return float(np.mean(obs[idx] == tru[idx]))


def _as_score_tensor(scores: ScoresLike) -> torch.Tensor:
    """Return ``scores`` as a 1-d float32/float64 CPU tensor, with its order unchanged."""
    if isinstance(scores, torch.Tensor):
        s = scores.detach()
    else:
        arr = np.asarray(scores)
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(
                f"scores must be floating point (a per-sample loss), got dtype {arr.dtype}"
            )
        s = torch.from_numpy(arr.astype(np.float64))
    if s.ndim != 1:
        raise DataError(f"scores must be 1-d, one per sample, got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise DataError(f"scores must be floating point (a per-sample loss), got dtype {s.dtype}")
    s = s.cpu()
    # float32 and float64 sort as they are; narrower floats widen exactly to float32.
    return s if s.dtype in (torch.float32, torch.float64) else s.float()
