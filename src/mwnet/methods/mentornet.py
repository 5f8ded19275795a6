"""MentorNet with its predefined curriculum (Jiang et al., 2018): a sample counts while its
loss stays below a moving average of a high percentile of the batch losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import StepOutput
from mwnet.methods.plain import PlainMethod
from mwnet.methods.schedule import check_epoch_option, configured_epochs, percent_of_training

BURN_IN_PERCENT = 18
"""The predefined curriculum weighs every sample 1 while the run is at most 18% done."""
SOFT_FROM_PERCENT = 90
"""... and from 90% on turns soft: v = clip(1 - (loss - threshold) / gamma, 0, 1), gamma = 1."""


def check_percentile(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"method.mentornet.percentile must lie in [0, 1], got {p}")
    return float(p)


def check_ema_decay(decay: float) -> float:
    if not 0.0 <= decay < 1.0:
        raise ValueError(
            f"method.mentornet.ema_decay must lie in [0, 1) (1 would never move the "
            f"threshold from 0), got {decay}"
        )
    return float(decay)


@dataclass
class MentorNetOptions:
    """``method.mentornet.*``."""

    percentile: float = 0.7
    """p: the threshold is a moving average of the p-th percentile of the batch losses
    (the authors' default 0.7; their commands ask 0.75 at 20% and 40% noise, 0.5 at 80%)"""
    ema_decay: float = 0.5
    """the moving average's decay: λ <- decay·λ + (1 - decay)·percentile, every step"""
    burn_in_epochs: int | None = None
    """epochs (from 0) in which every sample weighs 1; null: the curriculum's own, the
    epochs that start within the first 18% of optim.epochs"""

    def __post_init__(self) -> None:
        check_percentile(self.percentile)
        check_ema_decay(self.ema_decay)
        check_epoch_option(self.burn_in_epochs, "method.mentornet.burn_in_epochs")


def nearest_percentile(values: torch.Tensor, p: float) -> torch.Tensor:
    """The p-th percentile of ``values`` as the authors' TensorFlow computes it
    (``percentile(x, 100p)``, interpolation "nearest"): sorted from the largest, the entry
    at index round((n − 1)(1 − p)), rounding half to even.

    That is the order statistic nearest to the p-quantile, except on ties of the rounding
    (n = 10, p = 0.5: index 4.5 rounds to 4 from the top, the 6th smallest, where
    rounding p·(n − 1) from the bottom would give the 5th).
    """
    n = values.numel()
    from_top = round((n - 1) * (1.0 - p))  # Python's round: half to even, as tf.round
    return values.reshape(-1).kthvalue(n - from_top).values


def curriculum_weights(losses: torch.Tensor, threshold: float, percent: int) -> torch.Tensor:
    """The predefined curriculum v*(ℓ, ℓ − λ, percent of training) of the authors'
    ``vstar_mentornet_pd`` after the burn-in: self-paced, v = 1[ℓ − λ ≤ 0], until 90% of
    training, then v = clip(1 − (ℓ − λ), 0, 1)."""
    diff = losses.detach() - threshold
    if percent >= SOFT_FROM_PERCENT:
        return (1.0 - diff).clamp(0.0, 1.0)
    return (diff <= 0).to(losses.dtype)


class MentorNetPD(PlainMethod):
    """Minimises (1/n) Σ_i v_i ℓ_i with MentorNet's predefined curriculum v (Jiang, Zhou,
    Leung, Li, Fei-Fei, "MentorNet: Learning Data-Driven Curriculum for Very Deep Neural
    Networks on Corrupted Labels", ICML 2018; code google/mentornet).

    Each step, λ ← d·λ + (1 − d)·(p-th percentile of the batch's losses), λ starting at
    0, and sample i weighs v_i = 1[ℓ_i − λ ≤ 0]: a loss above the smoothed high
    percentile marks a likely wrong label. Every sample weighs 1 in the burn-in, and from
    90% of training on the weight is soft, clip(1 − (ℓ_i − λ), 0, 1). λ is updated in
    the burn-in too, so it is warm when selection starts. The loss is divided by the
    batch size, as the authors do. ``StepOutput.weights`` holds v, ``StepOutput.losses``
    the plain CE of every sample; λ is saved in :meth:`state_dict`.

    Departures from the authors' code:

    * v is their predefined curriculum itself (``vstar_mentornet_pd`` in
      ``training_mentornet/models.py``, with ``vstar_gamma`` = 1), not the small network
      they train to imitate it and then run (``utils.mentornet``); the two agree up to
      that network's fit.
    * Progress is counted per epoch, ⌊100·epoch/epochs⌋ at the epoch's start, where they
      count it per step (⌊100·step/max_steps⌋).
    * ``burn_in_epochs`` can replace the curriculum's burn-in (the first 18% of training)
      by a number of epochs.
    * No example drop-out: their runs also zero the weights of a random 50% of each batch
      in the first 17% of training and of 5% afterwards (``example_dropout_rates``).
    * Weight decay is the optimizer's, not scaled by Σv/n as in their training script.
    * Their percentile flag is ``loss_p_percentile`` (default 0.7); their commands spell it
      ``loss_p_precentile``, which TensorFlow 1's tolerant flag parsing would ignore, so
      their runs may well have used 0.7. The decay is their script's flag default, 0.5
      (their ``utils.mentornet`` function's own default is 0.9).
    * Under data parallelism the percentile is taken over the global batch (every rank
      gathers the losses of all), so the ranks weigh as one process does.
    """

    name = "mentornet-pd"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int | None,
        percentile: float = 0.7,
        ema_decay: float = 0.5,
        burn_in_epochs: int | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.epochs = configured_epochs(epochs, self.name, "options['epochs']")
        self.percentile = check_percentile(percentile)
        self.ema_decay = check_ema_decay(ema_decay)
        self.burn_in_epochs = check_epoch_option(burn_in_epochs, "method.mentornet.burn_in_epochs")
        self.epoch = 0
        self.threshold = 0.0
        """λ, the moving average of the batch losses' percentile (0 before any step)."""
        self._next_threshold: float | None = None

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def percent(self) -> int:
        """How far the run is at this epoch's start, in percent (MentorNet's epoch unit)."""
        return percent_of_training(self.epoch, self.epochs)

    def burning_in(self) -> bool:
        """Whether every sample weighs 1 this epoch."""
        if self.burn_in_epochs is not None:
            return self.epoch < self.burn_in_epochs
        return self.percent() <= BURN_IN_PERCENT

    def weigh(
        self, losses: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[float, torch.Tensor]:
        """The moving average after this batch, and the batch's weights (no gradient);
        ``self.threshold`` is left as it is."""
        batch = self.global_batch(losses)
        percentile = float(nearest_percentile(batch, self.percentile))
        d = self.ema_decay
        threshold = d * self.threshold + (1.0 - d) * percentile
        if self.burning_in():
            return threshold, torch.ones_like(losses.detach())
        return threshold, self.curriculum(losses, threshold, labels)

    def curriculum(
        self, losses: torch.Tensor, threshold: float, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The weights after the burn-in, from the losses and the moving average λ after
        this batch: here the predefined curriculum (a learned mentor in MentorNet-DD)."""
        return curriculum_weights(losses, threshold, self.percent())

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._next_threshold, v = self.weigh(losses, y)  # kept only if the step succeeds
        return (v * losses).mean(), v

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        self._next_threshold = None
        out = super().step(x, y, index)
        if self._next_threshold is not None:
            self.threshold = self._next_threshold
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.threshold = float(state["threshold"])
