"""Bootstrapping (Reed et al., 2015): the target mixes the given label with the model's own
prediction, so a label the model confidently disagrees with pulls less."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.plain import PlainMethod


def check_bootstrap_beta(beta: float, key: str) -> float:
    """β = 1 is cross-entropy; β = 0 trusts only the model's prediction."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"{key} must lie in [0, 1], got {beta}")
    return float(beta)


@dataclass
class BootstrapHardOptions:
    """``method.bootstrap_hard.*``."""

    beta: float = 0.8
    """weight of the given label in the target; 1 - beta goes to the predicted class"""

    def __post_init__(self) -> None:
        check_bootstrap_beta(self.beta, "method.bootstrap_hard.beta")


@dataclass
class BootstrapSoftOptions:
    """``method.bootstrap_soft.*``."""

    beta: float = 0.95
    """weight of the given label in the target; 1 - beta goes to the predicted
    probabilities"""

    def __post_init__(self) -> None:
        check_bootstrap_beta(self.beta, "method.bootstrap_soft.beta")


def hard_bootstrap_losses(logits: torch.Tensor, ce: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sample −Σ_k (β·t_k + (1−β)·z_k) log p_k = β·CE + (1−β)·(−log p_ẑ), with z the
    one-hot of ẑ = argmax p (the first of tied maxima).

    The argmax has no gradient, so the target is a constant, as in the paper.
    """
    predicted = logits.detach().argmax(dim=1, keepdim=True)
    log_p = F.log_softmax(logits, dim=1, dtype=ce.dtype)
    return beta * ce - (1.0 - beta) * log_p.gather(1, predicted)[:, 0]


def soft_bootstrap_losses(logits: torch.Tensor, ce: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-sample −Σ_k (β·t_k + (1−β)·p_k) log p_k = β·CE + (1−β)·H(p), H the entropy of
    the prediction.

    p is not detached in the target: the paper's soft bootstrapping *is* cross-entropy
    with minimum-entropy regularisation (Grandvalet & Bengio), which needs the gradient
    of H(p). A detached target p̂ = p would add (1−β)(p − p̂) = 0 to the gradient with
    respect to the logits: the step would be β times cross-entropy's.
    """
    log_p = F.log_softmax(logits, dim=1, dtype=ce.dtype)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    return beta * ce + (1.0 - beta) * entropy


class BootstrapHard(PlainMethod):
    """Minimises the batch mean of −Σ_k (β·t_k + (1−β)·z_k) log p_k, z the one-hot
    predicted class (Reed, Lee, Anguelov, Szegedy, Erhan, Rabinovich, "Training Deep
    Neural Networks on Noisy Labels with Bootstrapping", ICLR workshop 2015; MW-Net's
    "Reed-Hard" baseline).

    Where the model predicts the given label the loss is CE; where it predicts another
    class, 1 − β of the target moves to that class, so a label the model has learned to
    disbelieve pulls with β instead of 1. ``StepOutput.losses`` holds the plain CE.

    Departures from the paper's description and from the Keras version the SCE authors
    published (YisenWang/symmetric_cross_entropy_for_noisy_labels, ``boot_hard``; Reed et
    al. published no code):

    * log p is the exact log-softmax; the Keras version clips p to [1e-7, 1 − 1e-7]
      first (no gradient for probabilities outside, which changes only extreme samples).
    """

    name = "bootstrap-hard"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        beta: float = 0.8,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.beta = check_bootstrap_beta(beta, "method.bootstrap_hard.beta")

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return hard_bootstrap_losses(logits, losses, self.beta).mean(), None


class BootstrapSoft(PlainMethod):
    """Minimises the batch mean of −Σ_k (β·t_k + (1−β)·p_k) log p_k (Reed et al., ICLR
    workshop 2015, soft bootstrapping; β = 0.95 in the paper).

    Equivalently β·CE + (1−β)·H(p): cross-entropy plus a push towards confident
    predictions, which lets the model's own consistent predictions outweigh scattered
    wrong labels. ``StepOutput.losses`` holds the plain CE.

    Departures from the SCE authors' Keras version (``boot_soft``): log p is the exact
    log-softmax, not p clipped to [1e-7, 1 − 1e-7]. As there (and as the paper's
    equivalence with entropy regularisation requires), p in the target is not detached.
    """

    name = "bootstrap-soft"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        beta: float = 0.95,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.beta = check_bootstrap_beta(beta, "method.bootstrap_soft.beta")

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return soft_bootstrap_losses(logits, losses, self.beta).mean(), None
