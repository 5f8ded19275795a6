"""Class-balanced loss (Cui et al., 2019): the paper's fixed re-weighting for class imbalance."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.losses import check_focal_gamma, class_balanced_weights, focal_losses
from mwnet.methods.plain import PlainMethod

BaseLoss = Literal["ce", "focal"]
BASE_LOSSES: tuple[str, ...] = typing.get_args(BaseLoss)


@dataclass
class ClassBalancedOptions:
    """``method.class_balanced.*``."""

    beta: float = 0.9999
    """beta of the effective number of samples (1 - beta^n) / (1 - beta)"""
    loss: BaseLoss = "ce"
    """the loss each class weight multiplies: ce | focal"""
    gamma: float = 1.0
    """loss=focal only: the focal loss's gamma"""


class ClassBalanced(PlainMethod):
    """Minimises (1/n) Σ_i w_{y_i} ℓ_i with effective-number class weights w.

    ``ℓ`` is cross-entropy or, with ``base_loss="focal"``, the focal loss (Cui et al. report
    both). The weights depend on the label only, so they are computed once from the
    training-set ``class_counts``; ``StepOutput.weights`` holds w_{y_i}.
    """

    name = "class-balanced"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        class_counts: torch.Tensor,
        *,
        beta: float = 0.9999,
        base_loss: BaseLoss = "ce",
        gamma: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        if base_loss not in BASE_LOSSES:
            raise ValueError(f"cb_loss must be one of {BASE_LOSSES}, got {base_loss!r}")
        param = next(model.parameters())
        self.class_weights = class_balanced_weights(class_counts, beta).to(param.device)
        self.beta, self.base_loss = float(beta), base_loss
        self.gamma = check_focal_gamma(gamma) if base_loss == "focal" else float(gamma)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.class_weights.numel() != logits.shape[-1]:
            raise ValueError(
                f"class_counts has {self.class_weights.numel()} entries but the model outputs "
                f"{logits.shape[-1]} classes; pass one training-set count per output class"
            )
        weights = self.class_weights.to(losses.dtype)[y]
        per_sample = focal_losses(losses, self.gamma) if self.base_loss == "focal" else losses
        return (weights * per_sample).mean(), weights
