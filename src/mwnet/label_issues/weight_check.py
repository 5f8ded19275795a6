"""Does a run's weighting agree with its own judgement of its labels? A check that needs no
true label.

A weighting method (MW-Net, CMW-Net, L2RW, ...) is meant to give the wrong labels less
weight. The run also scores every label by itself (:mod:`mwnet.label_issues.score`: how
often the model predicted the given label over its evaluation passes). The two are made
independently: the weight from the meta gradient, the score from the model's own
predictions. When the weights rise where the score falls (a negative rank correlation),
the weighting favours exactly the samples the run finds suspicious: under noise that
follows the images (annotators' mistakes on ambiguous images) a loss-to-weight curve can
learn to up-weight the moderate-loss wrong labels, and nothing else in the run shows it.

Per epoch the check records the Spearman correlation of the epoch's weights with the
score (``weight_score_corr``). It speaks only when the score rests on enough evaluation
passes (:data:`~mwnet.label_issues.score.MIN_PASSES`) and the correlation is negative
beyond what chance gives: below ``-max(0.1, 3 / sqrt(n - 1))`` for ``n`` samples, three
standard deviations of Spearman's correlation between independent rankings and at least
a tenth of the way to a reversed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mwnet.label_issues.score import MIN_PASSES, quality_scores
from mwnet.run.signals import SampleSignals

MIN_NEGATIVE = 0.1
"""The smallest size of a negative correlation the check reports, however many samples."""

ADVICE = (
    "the weights favour the labels this run itself finds suspicious; learned weighting is "
    "likely hurting here: compare with method.name=l2rw or finetune on the same trusted "
    "set, or train ce without the flagged labels (mwnet compare --retrain)"
)


@dataclass(frozen=True)
class WeightCheck:
    """One epoch's check of the weights against the run's own label score."""

    correlation: float | None
    """Spearman correlation of the epoch's weights with the label score (None: too few
    samples weighted, or weights or score constant)."""
    passes: int
    """Evaluation passes behind the score (0: the score is the training loss's)."""
    weighted: int
    """Samples with a weight this epoch."""

    @property
    def bound(self) -> float:
        """How negative the correlation must be to count: see the module docstring."""
        return -max(MIN_NEGATIVE, 3.0 / math.sqrt(max(self.weighted - 1, 1)))

    @property
    def judged(self) -> bool:
        """The score rests on enough evaluation passes to judge the weights by it."""
        return self.correlation is not None and self.passes >= MIN_PASSES

    @property
    def favours_suspects(self) -> bool:
        """The weights rise where the run's own score says the label is likely wrong."""
        return self.judged and self.correlation is not None and self.correlation < self.bound


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties) in float64; None when either
    side is constant or fewer than 3 pairs are given."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return None if norm == 0.0 else float(ra @ rb) / norm


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def check_weights(signals: SampleSignals, weights: np.ndarray) -> WeightCheck:
    """The check of one epoch's per-sample ``weights`` (NaN where a sample got none)
    against the run's label score so far."""
    weights = np.asarray(weights, np.float64)
    seen = ~np.isnan(weights)
    if seen.sum() < 3:
        return WeightCheck(None, signals.epochs, int(seen.sum()))
    score = quality_scores(signals, "auto").values
    corr = spearman(weights[seen], score[seen])
    return WeightCheck(corr, signals.epochs, int(seen.sum()))


def curve_trend(losses: np.ndarray, weights: np.ndarray) -> float | None:
    """The direction of a learned loss-to-weight curve sampled at ``losses``: Spearman's
    correlation of weight with loss (one curve per column of a 2-d ``weights`` is averaged
    first). Near -1: it trusts small losses (what noisy labels need); near +1: it favours
    hard samples (what class imbalance needs)."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim == 2:
        weights = weights.mean(axis=1)
    return spearman(np.asarray(losses, np.float64), weights)
