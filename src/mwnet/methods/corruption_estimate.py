"""Label-corruption matrices estimated from a model's class probabilities.

Two methods train through a matrix C whose row i is the distribution of the label a
sample of class i is given (C[i, j] = p(label j | class i)):

* Gold Loss Correction (Hendrycks et al., 2018) knows the true class of a small trusted
  set and averages, per true class, the probabilities that a model trained on the noisy
  labels gives those samples (:func:`trusted_set_estimate`; the authors' "confusion"
  baseline counts its argmax predictions instead, :func:`trusted_confusion_estimate`);
* the S-Model (Goldberger & Ben-Reuven, 2017) has no trusted set: it takes the base
  network's prediction as the class and counts the noisy labels each predicted class
  receives on the training set (:func:`noisy_label_confusion`).

All are one computation, :func:`transition_estimate`: C[i, j] = Σ_t a_ti b_tj / Σ_t a_ti,
where a_t says how much sample t belongs to row i (a one-hot class, or probabilities) and
b_t what it shows in column j (probabilities, or a one-hot label). Everything here runs in
float64 on whatever the caller passes, and is a pure function of its inputs.

Rows no sample reaches (a class absent from the trusted set, a class the network never
predicts) would be 0/0; they are set to the identity row, i.e. that class's labels are
taken as clean. The authors' code leaves them NaN (GLC: the mean of an empty set, which
turns every loss NaN) or log(1e-8) everywhere (the S-Model's script).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``labels`` (n,) as float64 one-hot rows (n, num_classes).

    Raises:
        ValueError: a label outside [0, num_classes).
    """
    labels = torch.as_tensor(labels).long().cpu()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model, "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    return F.one_hot(labels, num_classes).to(torch.float64)


def transition_estimate(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """C[i, j] = Σ_t rows[t, i] · columns[t, j] / Σ_t rows[t, i], in float64, shape (K, K).

    ``rows`` (n, K) holds how much each sample belongs to row i, ``columns`` (n, K) what it
    contributes to column j; when each ``columns`` row sums to 1, so does each row of C.
    A row with Σ_t rows[t, i] = 0 becomes the identity row e_i.
    """
    rows, columns = rows.to(torch.float64), columns.to(torch.float64)
    if rows.dim() != 2 or rows.shape != columns.shape or rows.shape[1] == 0:
        raise ValueError(
            f"rows and columns must both be (n, K) tables, got {tuple(rows.shape)} and "
            f"{tuple(columns.shape)}"
        )
    mass = rows.sum(0)
    reached = mass > 0
    totals = rows.T @ columns
    estimate = torch.eye(rows.shape[1], dtype=torch.float64)
    estimate[reached] = totals[reached] / mass[reached, None]
    return estimate


def trusted_set_estimate(probabilities: torch.Tensor, true_labels: torch.Tensor) -> torch.Tensor:
    """GLC's Ĉ: row i is the mean of ``probabilities`` (n, K) over the trusted samples of
    true class i (the model was trained on the noisy labels, so it predicts the label a
    sample of class i tends to be given)."""
    k = probabilities.shape[1]
    return transition_estimate(one_hot(true_labels, k), probabilities)


def trusted_confusion_estimate(
    probabilities: torch.Tensor, true_labels: torch.Tensor, smoothing: float = 0.01
) -> torch.Tensor:
    """The GLC authors' "confusion matrix" baseline: row i is the distribution of the
    argmax predictions on the trusted samples of true class i, mixed with the uniform
    distribution: (1 − smoothing)·counts + smoothing / K (their smoothing: 0.01).

    The authors divide the counts by (row count + 1e-7); here by the row count, so that
    every row sums to 1 (the 1e-7 only guards empty rows, which are identity rows here).
    """
    k = probabilities.shape[1]
    predicted = one_hot(probabilities.argmax(1), k)
    counts = transition_estimate(one_hot(true_labels, k), predicted)
    return (1 - smoothing) * counts + smoothing / k


def noisy_label_confusion(
    probabilities: torch.Tensor, noisy_labels: torch.Tensor, hard: bool = False
) -> torch.Tensor:
    """The S-Model's initial channel θ: row i is the distribution of the noisy labels of
    the training samples the base network puts in class i.

    ``hard=False`` (the paper's formula) weights each sample by its probability of class
    i: θ[i, j] = Σ_t p_ti 1{z_t = j} / Σ_t p_ti; ``hard=True`` (the default of the
    authors' script) counts the samples whose argmax is i.
    """
    k = probabilities.shape[1]
    given = one_hot(probabilities.argmax(1), k) if hard else probabilities
    return transition_estimate(given, one_hot(noisy_labels, k))


INVERSE_TEMPERATURE_RANGE = (2.0**-6, 2.0**6)
"""Where :func:`fit_inverse_temperature` looks: from far softer to far sharper than the
model's own probabilities."""


def fit_inverse_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The β that minimises the cross-entropy of softmax(β·logits) against ``labels``.

    The GLC authors' "calibrated" variant fits this on the trusted set (with a convex
    solver) and estimates C from the rescaled probabilities. The negative log-likelihood
    f(β) = Σ_t logsumexp(β·z_t) − β·z_{t,y_t} is convex in β, so f'(β) = Σ_t (E_{softmax(β
    z_t)}[z_t] − z_{t,y_t}) increases, and its zero is found by bisection in float64
    within :data:`INVERSE_TEMPERATURE_RANGE`; a minimum beyond the range (a model that
    separates the set perfectly wants β → ∞) stops at its end.
    """
    z = logits.to(torch.float64)
    labels = torch.as_tensor(labels).long().cpu().to(z.device)
    if z.dim() != 2 or len(labels) != len(z) or len(z) == 0:
        raise ValueError(
            f"logits must be (n, K) with n >= 1 and one label per row, got "
            f"{tuple(z.shape)} and {len(labels)} labels"
        )
    chosen = z.gather(1, labels[:, None])[:, 0]

    def slope(beta: float) -> float:
        return float((torch.softmax(beta * z, 1) * z).sum() - chosen.sum())

    lo, hi = INVERSE_TEMPERATURE_RANGE
    if slope(lo) >= 0:
        return lo
    if slope(hi) <= 0:
        return hi
    for _ in range(100):  # halves [2^-6, 2^6] in log scale to the last bit of a float64
        mid = (lo * hi) ** 0.5
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
    return (lo * hi) ** 0.5
