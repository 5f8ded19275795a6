"""Self-paced learning (Kumar et al., 2010): train on the easy samples first, admitting
harder ones as training goes on; with noisy labels the hard ones are the suspects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mwnet.core.data_parallel import weighted_backward
from mwnet.core.reducer import GradientReducer
from mwnet.methods.plain import PlainMethod
from mwnet.methods.schedule import check_epoch_option, configured_epochs


def check_start_fraction(fraction: float) -> float:
    """A share of the batch in (0, 1]: every batch selects at least one sample."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"method.self_paced.start_fraction must lie in (0, 1], got {fraction}")
    return float(fraction)


@dataclass
class SelfPacedOptions:
    """``method.self_paced.*``."""

    start_fraction: float = 0.5
    """share of each batch selected at epoch 0 (its lowest losses)"""
    full_epoch: int | None = None
    """the epoch from which every sample is selected; the share grows linearly from
    start_fraction at epoch 0 to 1 there. null: optim.epochs (1 as the run ends)"""

    def __post_init__(self) -> None:
        check_start_fraction(self.start_fraction)
        check_epoch_option(self.full_epoch, "method.self_paced.full_epoch")


def selected_fraction(epoch: int, start: float, full_epoch: int) -> float:
    """The share of a batch selected in ``epoch``: ``start`` at epoch 0, growing linearly
    to 1 at ``full_epoch`` and staying there."""
    if epoch >= full_epoch:
        return 1.0
    return start + (1.0 - start) * epoch / full_epoch


def selected_count(fraction: float, n: int) -> int:
    """round(fraction·n), at least 1: the number of samples a batch of n selects.

    Rounding half up, not ceil or floor: 0.07·100 is 7.000000000000001 in floating point
    (ceil: 8) and 0.58·100 is 57.99999999999999 (floor: 57).
    """
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def self_paced_weights(
    losses: torch.Tensor, fraction: float, batch: torch.Tensor | None = None
) -> torch.Tensor:
    """v_i = 1 for the round(fraction·n) lowest losses, else 0: v_i = 1[ℓ_i ≤ λ] with the
    threshold λ the per-batch quantile, the k-th smallest loss (tied losses at λ are all
    selected). ``batch``: the whole batch's losses when ``losses`` is one rank's share."""
    batch = losses.detach() if batch is None else batch
    k = selected_count(fraction, batch.numel())
    threshold = batch.kthvalue(k).values
    return (losses.detach() <= threshold).to(losses.dtype)


class SelfPaced(PlainMethod):
    """Minimises the mean loss of the selected samples, Σ v_i ℓ_i / Σ v_i, with v_i = 1 for
    the lowest-loss share of the batch (Kumar, Packer, Koller, "Self-Paced Learning for
    Latent Variable Models", NIPS 2010, with the hard regulariser; MW-Net's SPL baseline).

    Kumar et al. minimise Σ v_i ℓ_i − λ Σ v_i over v ∈ {0, 1}^n, whose solution is
    v_i = 1[ℓ_i < λ], and grow λ (the "age") so that harder samples join. Here λ is a
    per-batch quantile of the losses: the selected share rises linearly from
    ``start_fraction`` at epoch 0 to 1 at ``full_epoch``, and λ is the k-th smallest loss
    of the batch for k = round(share·n). ``StepOutput.weights`` holds v, and
    ``StepOutput.losses`` the plain CE of every sample.

    Departures from the paper (which has no code for this setting):

    * λ is the quantile of each batch's losses for a scheduled share, not an absolute loss
      multiplied by a factor μ > 1 each round: a common practical form, free of the
      loss's scale (which changes a lot over training), and the share it selects is known.
    * The selection is per mini-batch with the current model, not an alternating
      minimisation over the whole training set to convergence.
    * The loss is the mean over the selected samples (the MW-Net paper's "loss over the
      selected samples"), so the step size does not shrink with the selected share.
    * Under data parallelism the quantile is taken over the global batch (every rank
      gathers the losses of all), so the ranks select what one process selects.
    """

    name = "self-paced"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        start_fraction: float = 0.5,
        full_epoch: int | None = None,
        epochs: int | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.start_fraction = check_start_fraction(start_fraction)
        full_epoch = check_epoch_option(full_epoch, "method.self_paced.full_epoch")
        if full_epoch is None:
            full_epoch = configured_epochs(epochs, "self-paced", "method.self_paced.full_epoch")
        self.full_epoch = full_epoch
        self.epoch = 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def fraction(self) -> float:
        """The share of each batch this epoch selects."""
        return selected_fraction(self.epoch, self.start_fraction, self.full_epoch)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = self_paced_weights(losses, self.fraction(), self.global_batch(losses))
        return (v * losses).sum() / v.sum(), v

    def backward_over_ranks(
        self, loss: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The mean over the selected samples of the global batch."""
        assert self.reducer is not None and weights is not None
        return weighted_backward(losses, weights, "sum", self.optimizer, self.reducer)[1]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
