"""Early-Learning Regularization (Liu et al., NeurIPS 2020): keep each sample near what the
network predicted for it early, before it memorised a wrong label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import StepOutput
from mwnet.methods.plain import PlainMethod

PROBABILITY_CLAMP = 1e-4
"""The authors clamp the softmax to [1e-4, 1 - 1e-4] before both the target update and the
regulariser, which keeps log(1 - <t, p>) finite."""


@dataclass
class ELROptions:
    """``method.elr.*``."""

    beta: float = 0.7
    """momentum of each sample's target, t <- beta t + (1 - beta) p (the authors: 0.7 for
    CIFAR-10, 0.9 for CIFAR-100)"""
    lam: float = 3.0
    """weight lambda of the regulariser log(1 - <t, p>) (the authors: 3 for CIFAR-10, 7 for
    CIFAR-100)"""


def check_elr_options(beta: float, lam: float) -> tuple[float, float]:
    """beta outside [0, 1) would not average (1 never moves the zero targets); lambda < 0
    would push predictions away from their targets."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"elr: beta (method.elr.beta) must lie in [0, 1), got {beta}")
    if not lam >= 0.0:
        raise ValueError(f"elr: lam (method.elr.lam) must be >= 0, got {lam}")
    return float(beta), float(lam)


class ELR(PlainMethod):
    """Cross-entropy plus λ · mean_i log(1 − ⟨t_i, p_i⟩), with t_i a running average of
    the network's own predictions for sample i.

    Early in training a network fits the clean majority and predicts the true class even for
    mislabelled samples; later it memorises the wrong labels. The target t_i, an exponential
    average of past predictions, remembers the early answer, and the regulariser's gradient
    pulls p_i towards t_i, against the cross-entropy's pull towards a wrong label. Per step,
    for the batch's samples (the authors' ``elr_loss``):

        p = clamp(softmax(logits), 1e-4, 1 − 1e-4)
        t[index] ← β · t[index] + (1 − β) · p̄ / Σ_k p̄_k      (p̄ = p, detached)
        loss = CE(logits, y) + λ · mean log(1 − Σ_k t[index]_k p_k)

    The targets start at zero and live in a (samples x classes) table in the model's dtype
    on its device; it is the method's state (checkpointed, so a resumed run continues
    exactly). ``step`` needs each sample's position in the training set, ``index``: the
    loop passes it (the descriptor reads it). Under data parallelism each rank updates its
    shard's rows and the ranks exchange them every step, so every rank's table is the one
    process's (up to the rounding of the model's diverging sums).

    Departures from the authors' code: a step whose loss or gradient is not finite writes
    no target (the check comes before the table is written); the authors' table is float32
    always, here it has the model's dtype. ELR+ (two networks, weight averaging, mixup and
    the target from the averaged peer) is not implemented.
    """

    name = "elr"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_samples: int,
        num_classes: int,
        *,
        beta: float = 0.7,
        lam: float = 3.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.beta, self.lam = check_elr_options(beta, lam)
        like = next(model.parameters())
        self.targets = torch.zeros(
            (int(num_samples), int(num_classes)), dtype=like.dtype, device=like.device
        )
        """t: one row per training sample, in training-set order."""
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        if index is None:
            raise ValueError(
                "elr keeps a target per training sample: call step(x, y, index) with each "
                "sample's position in the training set (the training loop passes it)"
            )
        index = torch.as_tensor(index, device=self.targets.device)
        if self.checks:
            self._check_index(index, len(y))
        self._pending = None
        out = super().step(x, y, index)
        self._write_targets()
        return out

    def _check_index(self, index: torch.Tensor, n: int) -> None:
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.shape != (n,):
            raise ValueError(
                f"elr: index must hold one integer position per sample, shape ({n},); got "
                f"{index.dtype} of shape {tuple(index.shape)}"
            )
        size = len(self.targets)
        bad = (index < 0) | (index >= size)
        if bool(bad.any()):
            at = int(bad.nonzero()[0])
            raise ValueError(
                f"elr: index {int(index[at])} at position {at} lies outside the training set "
                f"of {size} samples"
            )
        if len(torch.unique(index)) != n:
            raise ValueError("elr: index repeats a sample; each sample may appear once a batch")

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        assert self.batch_index is not None
        index = self.batch_index
        probs = F.softmax(logits, dim=1).clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
        seen = probs.detach()
        seen = (seen / seen.sum(dim=1, keepdim=True)).to(self.targets.dtype)
        rows = self.beta * self.targets[index] + (1.0 - self.beta) * seen
        self._pending = (index, rows)
        regulariser = torch.log(1.0 - (rows * probs).sum(dim=1)).mean()
        return losses.mean() + self.lam * regulariser, None

    def _write_targets(self) -> None:
        """The batch's new targets into the table, after the step succeeded; with a reducer
        every rank's rows into every rank's table (positions and rows in one float64
        gather: both exact there)."""
        assert self._pending is not None
        index, rows = self._pending
        self._pending = None
        if self.reducer is not None:
            packed = torch.cat([index.to(torch.float64)[:, None], rows.to(torch.float64)], 1)
            every = self.reducer.gather(packed, "targets")[0]
            index, rows = every[:, 0].long(), every[:, 1:]
        self.targets[index] = rows.to(self.targets.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "targets": self.targets.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        targets = state["targets"]
        if tuple(targets.shape) != tuple(self.targets.shape):
            raise ValueError(
                f"elr: the saved targets are for {targets.shape[0]} samples and "
                f"{targets.shape[1]} classes; this run has {self.targets.shape[0]} and "
                f"{self.targets.shape[1]}"
            )
        super().load_state_dict(state)
        self.targets.copy_(targets)
