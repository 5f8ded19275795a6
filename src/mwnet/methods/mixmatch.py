"""The pieces of DivideMix's semi-supervised step (Li et al., 2020, Alg. 1), as functions
of tensors: label co-refinement and co-guessing, sharpening, MixUp and the loss.

After the division, a sample judged clean keeps its label, refined towards the trained
network's own prediction as much as its clean probability w is low; a sample judged
noisy loses its label and gets one guessed by both networks. Both targets are sharpened
(temperature T), inputs and targets are mixed (MixMatch's MixUp with λ' = max(λ, 1 − λ),
so each mixed row stays closer to its own sample), and the network is trained with
cross-entropy on the labelled rows, a squared error on the unlabelled rows (weighted by
λ_u, ramped up after the warm-up) and a penalty that keeps the mean prediction near the
uniform prior. Every formula follows the authors' ``Train_cifar.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p^(1/T)`` renormalised over the classes (rows of ``probabilities``)."""
    p = probabilities ** (1.0 / temperature)
    return p / p.sum(dim=1, keepdim=True)


def co_refine(
    own_views: Sequence[torch.Tensor],
    labels: torch.Tensor,
    clean: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Targets of the labelled samples: ``w·y + (1 − w)·p̄`` sharpened, where ``p̄`` is the
    trained network's mean probability over the augmented views and ``w`` the sample's
    clean probability (from the other network's division).

    Args:
        own_views: (n, c) class probabilities of the trained network, one per view.
        labels: (n,) the given labels.
        clean: (n,) clean probabilities w.
    """
    mean = torch.stack(list(own_views)).mean(dim=0)
    one_hot = F.one_hot(labels, mean.shape[1]).to(mean.dtype)
    w = clean.to(mean.dtype)[:, None]
    return sharpen(w * one_hot + (1 - w) * mean, temperature)


def co_guess(views: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Targets of the unlabelled samples: the mean class probability of both networks
    over the augmented views, sharpened."""
    return sharpen(torch.stack(list(views)).mean(dim=0), temperature)


def mixup_lambda(draw: float) -> float:
    """MixMatch's ``max(λ, 1 − λ)``: each mixed row is mostly its own sample."""
    return max(draw, 1.0 - draw)


def mix(
    rows: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``λ·a + (1 − λ)·a[perm]`` of the inputs and of the targets alike."""
    return (
        lam * rows + (1 - lam) * rows[permutation],
        lam * targets + (1 - lam) * targets[permutation],
    )


def mixup_draws(
    seed: int, step: int, network: int, alpha: float, rows: int
) -> tuple[float, torch.Tensor]:
    """λ' and the permutation of one network's MixUp at one step: from a generator of
    (run seed, step, network) alone, so every rank of a data-parallel job and a resumed
    run draw the same ones, and the global random state is not moved."""
    rng = np.random.default_rng([seed, step, network])
    lam = mixup_lambda(float(rng.beta(alpha, alpha)))
    return lam, torch.from_numpy(rng.permutation(rows))


def linear_rampup(current: float, warmup: int, length: int, lambda_u: float) -> float:
    """λ_u · clip((current − warmup) / length, 0, 1), ``current`` the epoch with its
    fraction done (the authors' ``linear_rampup`` with ``rampup_length=16``)."""
    return lambda_u * float(np.clip((current - warmup) / length, 0.0, 1.0))


def prior_penalty(mean_prediction: torch.Tensor) -> torch.Tensor:
    """Σ_c π_c log(π_c / p̄_c) with the uniform prior π: the KL divergence from the
    uniform distribution to the batch's mean prediction, which keeps the network from
    assigning every sample to one class (the authors' regularisation)."""
    prior = torch.full_like(mean_prediction, 1.0 / mean_prediction.shape[-1])
    return (prior * torch.log(prior / mean_prediction)).sum()


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_c p_c log p_c: the confidence penalty the authors add to the warm-up's
    cross-entropy under asymmetric noise (its mean is their ``NegEntropy``)."""
    p = torch.softmax(logits, dim=1)
    return (p * torch.log(p)).sum(dim=1)


@dataclass(frozen=True)
class SemiSupervisedLoss:
    """The parts of DivideMix's loss on one mixed batch."""

    labelled: torch.Tensor
    """L_x: cross-entropy of the labelled rows with their mixed targets."""
    unlabelled: torch.Tensor
    """L_u: mean squared error of the unlabelled rows' probabilities and targets."""
    penalty: torch.Tensor
    """The prior penalty on the mean prediction over all rows."""


def semi_supervised_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    labelled: torch.Tensor,
    labelled_rows: int,
    unlabelled_rows: int,
    mean_prediction: torch.Tensor,
) -> SemiSupervisedLoss:
    """L_x, L_u and the penalty of mixed rows (logits and targets (m, c); ``labelled`` the
    rows that are labelled). The means are over ``labelled_rows`` and ``unlabelled_rows``
    rows (L_u also over the classes), the global batch's counts, so that ranks holding
    parts of the rows add up to the whole; a part with no rows contributes 0.
    ``mean_prediction`` is the mean probability over all rows of the global batch.
    """
    x, u = labelled, ~labelled
    lx = -(targets[x] * F.log_softmax(logits[x], dim=1)).sum() / max(labelled_rows, 1)
    classes = logits.shape[1]
    squared = (torch.softmax(logits[u], dim=1) - targets[u]) ** 2
    lu = squared.sum() / max(unlabelled_rows * classes, 1)
    return SemiSupervisedLoss(lx, lu, prior_penalty(mean_prediction))
