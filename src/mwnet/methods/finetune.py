"""Fine-tuning on the meta set: the simplest use of the clean data, and the baseline to beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import StepOutput
from mwnet.methods.plain import PlainMethod


@dataclass
class FinetuneOptions:
    """``method.finetune.*``."""

    epochs: int = 10
    """epochs on the clean meta set after the configured training epochs"""
    lr: float = 1e-3
    """learning rate of those epochs"""


class Finetune(PlainMethod):
    """Cross-entropy on training batches for ``epochs`` epochs, then on meta batches.

    Meta-Weight-Net uses the small clean set only to learn weights; fine-tuning on that set
    after ordinary training shows what the same clean data buys without meta-learning.

    How the loop drives it: it runs ``epochs + extra_epochs`` epochs and calls
    :meth:`source` at the start of every epoch; for epochs ``>= epochs`` the answer is
    ``"meta"`` and the loop must pass meta-set batches (one pass over the meta set per
    epoch) to :meth:`step`. In those epochs every step first sets each param group's
    learning rate to ``finetune_lr``, so a learning-rate scheduler still stepping cannot
    move it; the optimizer (and its momentum) is otherwise the training one.

    Args:
        epochs: the configured number of ordinary training epochs.
        finetune_epochs: epochs on the meta set afterwards (``extra_epochs``).
        finetune_lr: learning rate of the fine-tuning epochs.
    """

    name = "finetune"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        finetune_epochs: int = 10,
        finetune_lr: float = 1e-3,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(
                f"finetune needs options['epochs'], the configured number of training epochs "
                f"(an integer >= 0), got {epochs!r}"
            )
        bad_count = isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int)
        if bad_count or finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
        if not finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {finetune_lr!r}")
        self.epochs = epochs
        self.extra_epochs = finetune_epochs
        self.finetune_lr = float(finetune_lr)
        self.phase = "train"

    def source(self, epoch: int) -> str:
        self.phase = "meta" if epoch >= self.epochs else "train"
        if self.phase == "meta":
            self._set_lr()
        return self.phase

    def batch_kind(self) -> str:
        return "meta" if self.phase == "meta" else "training"

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        if self.phase == "meta":
            self._set_lr()
        return super().step(x, y, index)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return losses.mean(), None

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.finetune_lr
