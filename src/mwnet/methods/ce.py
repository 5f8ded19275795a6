"""Plain cross-entropy: the paper's BaseModel, the reference every method is compared to."""

from __future__ import annotations

import torch

from mwnet.methods.plain import PlainMethod


class CrossEntropy(PlainMethod):
    """Minimises the mean cross-entropy of the training batch."""

    name = "ce"

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return losses.mean(), None
