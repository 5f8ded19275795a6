"""Generalized cross-entropy (Zhang & Sabuncu, 2018): a loss between CE and MAE, robust to
noisy labels by bounding what one sample can contribute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.plain import PlainMethod
from mwnet.methods.schedule import check_epoch_option, configured_epochs


def check_gce_q(q: float) -> float:
    """q → 0 is cross-entropy (not an L_q loss: divide by zero), q = 1 is MAE's 1 − p_y."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"method.gce.q must lie in (0, 1], got {q}")
    return float(q)


def check_gce_k(k: float) -> float:
    """k = 0 truncates nothing (L_q itself); k = 1 truncates every sample."""
    if not 0.0 < k < 1.0:
        raise ValueError(f"method.gce.k must lie in (0, 1), got {k}")
    return float(k)


@dataclass
class GceOptions:
    """``method.gce.*``."""

    q: float = 0.7
    """q in L_q = (1 - p_y^q) / q: q -> 0 is cross-entropy, 1 is MAE (1 - p_y)"""
    truncated: bool = False
    """the truncated L_q: a sample with p_y <= k takes the constant L_q(k), no gradient"""
    k: float = 0.5
    """truncated=true: the threshold on the label's probability p_y"""
    truncate_from: int | None = None
    """truncated=true: the first epoch (from 0) that truncates, untruncated L_q before it;
    null: a third of optim.epochs (the paper prunes first at epoch 40 of 120)"""

    def __post_init__(self) -> None:
        check_gce_q(self.q)
        check_gce_k(self.k)
        check_epoch_option(self.truncate_from, "method.gce.truncate_from")


def lq_losses(ce: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample L_q = (1 − p_y^q) / q from CE = −log p_y.

    p_y^q = exp(−q·CE), and 1 − exp(−q·CE) is ``−expm1(−q·CE)``: accurate where p_y is
    near 1 (1 − p_y^q would cancel), and its gradient p_y^q·∇CE is the paper's ∇L_q.
    """
    return -torch.expm1(-q * ce) / q


class GeneralizedCrossEntropy(PlainMethod):
    """Minimises the batch mean of L_q = (1 − p_y^q)/q (Zhang & Sabuncu, "Generalized Cross
    Entropy Loss for Training Deep Neural Networks with Noisy Labels", NeurIPS 2018).

    ∇L_q = p_y^q ∇CE: cross-entropy's gradient scaled down for samples the model finds
    unlikely, the mislabelled ones among them, so they pull less than under CE; q = 1 is
    MAE, which is robust but slow to fit. With ``truncated``, from epoch ``truncate_from``
    on, a sample with p_y ≤ k takes the constant L_q(k) = (1 − k^q)/q (no gradient), the
    paper's truncated loss; ``StepOutput.weights`` then holds the 0/1 mask (1 = kept, and
    all ones before ``truncate_from``), and ``StepOutput.losses`` the plain CE as always.

    Departures from the paper and from the reference implementation it is checked
    against (AlanChou/Truncated-Loss, an unofficial one in PyTorch):

    * The truncation mask is taken per batch from the current step's predictions. The
      paper keeps a mask per training sample and refreshes it by a pruning pass over the
      whole training set every 10 epochs from epoch 40 (with the best epoch's model); here
      there is no pruning pass, so a sample's mask follows the model step by step.
    * Before the first pruning the reference trains on L_q without truncation, and so does
      this before ``truncate_from`` (default a third of the epochs, the paper's 40 of 120).
      This matters: at initialisation p_y ≈ 1/K ≤ k, so truncating from the start would
      give every sample the constant loss and the model no gradient at all.
    * The reference reports mean(w·(L_q(p) − L_q(k))), the paper's loss less the constant
      L_q(k); this reports the paper's value. The gradients are the same.
    * L_q is computed from the cross-entropy as −expm1(−q·CE)/q rather than from the
      softmax probability, which is the same function, more accurate where p_y ≈ 1.
    """

    name = "gce"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        q: float = 0.7,
        truncated: bool = False,
        k: float = 0.5,
        truncate_from: int | None = None,
        epochs: int | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.q, self.k, self.truncated = check_gce_q(q), check_gce_k(k), bool(truncated)
        truncate_from = check_epoch_option(truncate_from, "method.gce.truncate_from")
        if truncated and truncate_from is None:
            truncate_from = configured_epochs(epochs, "gce", "method.gce.truncate_from") // 3
        self.truncate_from = truncate_from
        self.epoch = 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def truncating(self) -> bool:
        """Whether this epoch's steps truncate."""
        return self.truncated and self.epoch >= int(self.truncate_from or 0)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lq = lq_losses(losses, self.q)
        if not self.truncated:
            return lq.mean(), None
        if not self.truncating():
            return lq.mean(), torch.ones_like(losses)
        kept = torch.exp(-losses.detach()) > self.k
        floor = (1.0 - self.k**self.q) / self.q
        per_sample = torch.where(kept, lq, torch.full_like(lq, floor))
        return per_sample.mean(), kept.to(losses.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
