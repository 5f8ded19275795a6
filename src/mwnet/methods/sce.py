"""Symmetric cross-entropy (Wang et al., 2019): cross-entropy plus its reverse, which is
bounded and so tolerant of wrong labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.plain import PlainMethod

PROBABILITY_FLOOR = 1e-7
"""The authors clamp the predicted probabilities to [1e-7, 1] before the reverse term."""
LABEL_FLOOR = 1e-4
"""... and the one-hot label to [1e-4, 1]: log 0 becomes log 1e-4 = -9.21."""


def check_sce_weights(alpha: float, beta: float) -> tuple[float, float]:
    """Both terms' weights are >= 0 and not both 0 (that loss would train nothing)."""
    if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
        raise ValueError(
            f"method.sce.alpha and method.sce.beta must be >= 0 and not both 0, got "
            f"alpha={alpha}, beta={beta}"
        )
    return float(alpha), float(beta)


@dataclass
class SceOptions:
    """``method.sce.*``."""

    alpha: float = 0.1
    """weight of cross-entropy (the authors: 0.1 on CIFAR-10, 6.0 on CIFAR-100, 0.01 on
    MNIST)"""
    beta: float = 1.0
    """weight of reverse cross-entropy (the authors: 1.0 on CIFAR-10 and MNIST, 0.1 on
    CIFAR-100; the PyTorch reproduction's CIFAR-100 command uses 1.0)"""

    def __post_init__(self) -> None:
        check_sce_weights(self.alpha, self.beta)


def reverse_ce_losses(logits: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample reverse cross-entropy −Σ_k p_k log q_k, with p the softmax (clamped to
    [1e-7, 1]) and q the one-hot label clamped to [1e-4, 1], as the authors compute it.

    log q_y = log 1 = 0, so this is −log(1e-4)·Σ_{k≠y} max(p_k, 1e-7): about 9.21·(1 − p_y).
    Computed in ``dtype`` (the cross-entropies', float32 under mixed precision).
    """
    p = F.softmax(logits, dim=1, dtype=dtype).clamp(PROBABILITY_FLOOR, 1.0)
    label = F.one_hot(y, logits.shape[1]).to(dtype).clamp(LABEL_FLOOR, 1.0)
    return -(p * torch.log(label)).sum(dim=1)


class SymmetricCrossEntropy(PlainMethod):
    """Minimises the batch mean of α·CE + β·RCE (Wang, Ma, Chen, Luo, Yi, Bailey,
    "Symmetric Cross Entropy for Robust Learning with Noisy Labels", ICCV 2019).

    RCE = −Σ_k p_k log q_k swaps prediction and label; with log 0 replaced by a constant A
    it is A·(p_y − 1), bounded, and pulls a sample's prediction towards its label less as
    the model disagrees with it (the mislabelled ones), while CE keeps fitting the clean
    ones fast. ``StepOutput.losses`` holds the plain CE.

    Departures from the authors' code (YisenWang/symmetric_cross_entropy_for_noisy_labels,
    Keras) and its PyTorch reproduction (HanxunH/SCELoss-Reproduce, ``loss.py``):

    * The loss is the PyTorch reproduction's: the softmax clamped to [1e-7, 1] in the RCE
      term (no gradient where p_k < 1e-7) and the one-hot label to [1e-4, 1], so
      A = log 1e-4 ≈ −9.21 (both codes), not the A = −4 the paper states. The Keras code
      clamps the probabilities inside the CE term instead and leaves them unclamped in
      RCE; the two differ only where some p_k < 1e-7.
    * Their training script gives the network's fully connected block (``fc1``) weight
      decay 0.01 and the rest ``--l2_reg``; here weight decay is the optimizer's, alike
      on every parameter.
    """

    name = "sce"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        alpha: float = 0.1,
        beta: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.alpha, self.beta = check_sce_weights(alpha, beta)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        rce = reverse_ce_losses(logits, y, losses.dtype)
        return (self.alpha * losses + self.beta * rce).mean(), None
