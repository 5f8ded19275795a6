"""Focal loss (Lin et al., 2017): the paper's hand-designed "emphasise hard samples" baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.losses import check_focal_gamma, focal_losses
from mwnet.methods.plain import PlainMethod


@dataclass
class FocalOptions:
    """``method.focal.*``."""

    gamma: float = 1.0
    """gamma in -(1 - p_t)^gamma log p_t (0: cross-entropy)"""


class Focal(PlainMethod):
    """Minimises the batch mean of −(1−p_t)^γ log p_t.

    The factor (1−p_t)^γ is a fixed weighting that grows with the loss, the opposite of what
    noisy labels need; Meta-Weight-Net learns that choice instead. ``StepOutput.losses`` holds
    the plain cross-entropies, like every method, so runs stay comparable.
    """

    name = "focal"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        gamma: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.gamma = check_focal_gamma(gamma)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return focal_losses(losses, self.gamma).mean(), None
