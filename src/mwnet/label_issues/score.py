"""A label-quality score per training sample, and which samples to flag, from a run's
signals alone (no clean label anywhere).

The score is the share of the run's evaluation passes in which the model predicted the
given label, with ties broken by its mean softmax confidence in that label:
(agreements + mean confidence) / (passes + 1), in [0, 1], low = likely wrong. It was chosen
by measurement on the Fashion-MNIST suite (docs/LABEL_ISSUES.md): averaged over the whole
run it ranked corrupted labels better than the final weight, the mean weight, the mean or
last loss, the last or mean confidence and the mean logit margin, for cross-entropy and
for the weighting methods alike. A run that made no evaluation pass over its training set
(``eval_train=false``) falls back to exp(-mean training loss), the geometric-mean
probability of the given label during training.

Flags: by default (``threshold="auto"``) a sample is flagged when the model disagreed with
its given label in more than half of the passes (score < 0.5; for the confidence, margin
and loss scores, which are probabilities of the given label, when that probability is
below one half). ``threshold="mixture"`` instead fits a two-component Gaussian mixture to
the scores and flags the samples more likely to belong to the low component; either way
the estimated noise rate is the flagged share. The weight signal has no such fixed scale
(a weighting net's outputs may all lie between 0.05 and 0.4, or near 1), so under
``"auto"`` its flags come from the mixture: a split the weights' own distribution sets.

A score from a few evaluation passes is coarse (agreement over p passes takes only p + 1
values) and comes from early, still-learning models, which disagree with many right
labels: :func:`few_passes_warning` says so when a score rests on fewer than
:data:`MIN_PASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mwnet.run.signals import SampleSignals

SIGNALS = ("auto", "agreement", "confidence", "margin", "loss", "weight")
"""``auto``: agreement when the run made evaluation passes, else loss."""

AUTO_THRESHOLD = "auto"
"""The default flag rule: 0.5 for the probability-scaled scores, the mixture for weights."""

PASS_SIGNALS = ("agreement", "confidence", "margin")
"""Signals averaged over the run's evaluation passes."""

MIN_PASSES = 5
"""Evaluation passes below which a pass-based score is reported as unreliable."""


@dataclass(frozen=True)
class Scores:
    """One score per training sample, and which signal it came from."""

    values: np.ndarray
    signal: str
    """The signal used (``agreement``, ``confidence``, ``margin``, ``loss``, ``weight``)."""
    passes: int
    """Evaluation passes behind it (0 for the training-step signals' fallback)."""
    agree: np.ndarray | None = None
    """Agreement only: in how many passes each sample's prediction was its given label."""
    confidence: np.ndarray | None = None
    """Agreement only: each sample's mean softmax probability of its given label."""


def quality_scores(signals: SampleSignals, signal: str = "auto") -> Scores:
    """The label-quality score of every training sample (see the module docstring).

    Raises:
        ValueError: an unknown signal, or one the run did not record.
    """
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    passes = signals.epochs
    if signal == "auto":
        signal = "agreement" if passes else "loss"
    if signal in ("agreement", "confidence", "margin") and not passes:
        raise ValueError(
            f"signal {signal!r} needs the run's evaluation passes over its training set, and "
            "this run made none (eval_train=false); use signal 'loss' or 'weight'"
        )
    if signal == "weight" and not signals.has_weights:
        raise ValueError(
            "signal 'weight' needs a method that weights samples (mwnet, cmwnet, l2rw, ...); "
            "this run recorded no weights; use 'auto'"
        )
    agree = confidence = None
    if signal == "agreement":
        agree, confidence = signals.agree_count.numpy().copy(), signals.mean("confidence")
        values = (agree.astype(np.float64) + confidence) / (passes + 1)
    elif signal == "confidence":
        values = signals.mean("confidence")
    elif signal == "margin":
        values = 1.0 / (1.0 + np.exp(-signals.mean("margin")))
    elif signal == "loss":
        values = np.exp(-signals.mean("loss"))
    else:
        values = signals.mean("weight")
    if np.isnan(values).all():
        raise ValueError(
            "the run has not recorded any training signal yet; train at least one epoch"
        )
    # A sample never seen (e.g. an epoch cut short) gets the neutral middle, not NaN.
    values = np.where(np.isnan(values), 0.5, values)
    values = np.clip(values, 0.0, 1.0)
    return Scores(values=values, signal=signal, passes=passes, agree=agree, confidence=confidence)


def resolve_threshold(signal: str, threshold: float | str = AUTO_THRESHOLD) -> float | str:
    """The flag rule ``threshold`` stands for with scores of ``signal``: ``"auto"`` is 0.5
    for the scores on a probability scale and ``"mixture"`` for the weight (see the module
    docstring); any other value is returned as it is."""
    if threshold != AUTO_THRESHOLD:
        return threshold
    return "mixture" if signal == "weight" else 0.5


def few_passes_warning(scores: Scores) -> str | None:
    """Why a score that rests on fewer than :data:`MIN_PASSES` evaluation passes is not to
    be trusted yet, or None."""
    if scores.signal not in PASS_SIGNALS or scores.passes >= MIN_PASSES:
        return None
    p = scores.passes
    return (
        f"the score rests on only {p} evaluation pass{'' if p == 1 else 'es'} (fewer than "
        f"{MIN_PASSES}): {scores.signal} over so few passes is coarse (an agreement count "
        f"over {p} takes only {p + 1} values) and comes from early models that still "
        "disagree with many right labels, so the flags and the noise estimate are "
        "unreliable (often too high); train for more epochs with eval_train=true, then "
        "report again"
    )


def flag_issues(scores: np.ndarray, threshold: float | str = 0.5) -> np.ndarray:
    """Which samples to flag as likely mislabelled: ``scores < threshold``, or with
    ``threshold="mixture"`` the low component of a two-component Gaussian mixture
    (:func:`resolve_threshold` turns ``"auto"`` into one of the two for a signal)."""
    if threshold == "mixture":
        return low_component_posterior(scores) > 0.5
    if isinstance(threshold, str) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1] or 'mixture', got {threshold!r}")
    return scores < float(threshold)


def low_component_posterior(values: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Posterior probability of the lower-mean component of a 1-D two-component Gaussian
    mixture fitted by EM (the variances floored, so a tight cluster of equal scores
    cannot collapse a component).

    The posterior is made non-increasing in the value, since the wider component would
    otherwise claim both tails: a higher score never makes a sample more suspect.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        return np.zeros(len(x))
    floor = max(1e-4, 1e-4 * float(x.var()))
    mean = np.quantile(x, [0.1, 0.9])
    var = np.full(2, max(float(x.var()) / 4, floor))
    share = np.full(2, 0.5)
    for _ in range(iterations):
        log_p = -0.5 * (x[:, None] - mean) ** 2 / var - 0.5 * np.log(var) + np.log(share)
        log_p -= log_p.max(1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(1, keepdims=True)
        mass = resp.sum(0) + 1e-12
        new_mean = (resp * x[:, None]).sum(0) / mass
        var = np.maximum((resp * (x[:, None] - new_mean) ** 2).sum(0) / mass, floor)
        share = mass / len(x)
        converged = np.allclose(new_mean, mean, atol=1e-9)
        mean = new_mean
        if converged:
            break
    low, high = int(np.argmin(mean)), int(np.argmax(mean))
    # Beyond the two means the wider component claims the tail: evaluate the posterior at
    # the nearest mean there, then force it non-increasing in between.
    clipped = np.clip(x, mean[low], mean[high])
    log_p = -0.5 * (clipped[:, None] - mean) ** 2 / var - 0.5 * np.log(var) + np.log(share)
    log_p -= log_p.max(1, keepdims=True)
    resp = np.exp(log_p)
    posterior = resp[:, low] / resp.sum(1)
    order = np.argsort(x, kind="stable")
    out = np.empty_like(posterior)
    out[order] = np.minimum.accumulate(posterior[order])
    return out
