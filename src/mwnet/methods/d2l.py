"""Dimensionality-Driven Learning (Ma et al., ICML 2018): watch the dimensionality of the
network's representation, and once it starts to grow, trust the labels less."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.descriptor import SamplePass
from mwnet.methods.lid import lid_alpha, mean_lid, turning_point
from mwnet.methods.penultimate import PenultimateFeatures
from mwnet.methods.plain import PlainMethod

PROBABILITY_CLAMP = 1e-7
"""Keras' ``epsilon()``, to which the authors' adapted loss clips the prediction."""


@dataclass
class D2LOptions:
    """``method.d2l.*``."""

    k: int = 20
    """nearest neighbours in each point's LID estimate"""
    subset: int = 1280
    """training samples drawn each epoch for the LID estimate (all, if the set is smaller)"""
    batch: int = 128
    """the estimate's neighbours are searched within batches of this many of them"""
    init_epoch: int = 5
    """epochs before the turning point is looked for, besides the window (the authors: 5
    for MNIST, 20 for SVHN, 40 for CIFAR-10, 60 for CIFAR-100)"""
    window: int = 5
    """epochs of LID history the latest value is compared with"""


def check_d2l_options(o: D2LOptions) -> None:
    checks = [
        (o.k >= 1, "k must be >= 1"),
        (o.subset >= 2, "subset must be >= 2"),
        (o.batch >= 2, "batch must be >= 2"),
        (o.init_epoch >= 0, "init_epoch must be >= 0"),
        (o.window >= 1, "window must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"d2l: {message} (method.d2l.{message.split()[0]})")


def lid_subset(size: int, count: int, seed: int, epoch: int) -> torch.Tensor:
    """Which training samples epoch ``epoch``'s LID is estimated on: ``count`` distinct
    positions in random order (all ``size`` if fewer), drawn from the run's seed and the
    epoch alone, so a resumed run draws what it would have drawn and the global random
    state does not move."""
    g = torch.Generator().manual_seed(zlib.crc32(f"d2l/{seed}/{epoch}".encode()))
    return torch.randperm(size, generator=g)[: min(count, size)]


def _features(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return features


class D2L(PlainMethod):
    """Cross-entropy until the representation's dimensionality turns upward, then
    cross-entropy against targets that move from the label to the network's prediction.

    At the start of every epoch i the method estimates the local intrinsic dimensionality
    (LID) of the penultimate representation (the input of the network's last
    ``nn.Linear``, :class:`~mwnet.methods.penultimate.PenultimateFeatures`) on a random
    ``subset`` of the training samples, in eval mode without augmentation, each point's
    ``k`` nearest neighbours searched within its batch of ``batch``
    (:func:`~mwnet.methods.lid.mean_lid`). A non-positive or undefined estimate repeats
    the previous one. Once more than ``init_epoch + window`` values exist, the first epoch
    whose LID exceeds the mean of the ``window`` before it by more than two of their
    standard deviations is the turning point (:func:`~mwnet.methods.lid.turning_point`);
    from then on, at every epoch, α = exp(−(i / T) · LID_i / min LID)
    (:func:`~mwnet.methods.lid.lid_alpha`, T the configured epochs) and each sample's
    target is

        y* = α · onehot(y) + (1 − α) · onehot(argmax p),
        loss = mean −Σ_k y*_k log clip(p_k, 1e-7, 1 − 1e-7),

    the authors' ``lid_paced_loss`` (hard bootstrapping with an adaptive weight).

    The LID history, the turning epoch and α are the method's state (checkpointed); the
    subset is drawn from the run's seed and the epoch (:func:`lid_subset`), so a resumed
    run continues exactly. Under data parallelism the pass over the subset is sharded and
    gathered, so every rank takes the same decisions.

    Departures from the authors' code (github.com/xingjunm/dimensionality-driven-learning):

    * before the turning point the loss is cross-entropy, as in the paper; the code's later
      versions train that phase with symmetric cross-entropy (0.1 CE + 1.0 reverse CE for
      CIFAR-10) or with labels clipped to [0.01/9, 0.99];
    * at the turning point the code reloads the checkpoint it saves after every epoch,
      that is, the current weights: nothing is rolled back, here either;
    * the estimate is computed in float64 from the float32 features (the code: float32
      features, float64 distances, float32 LIDs); a lone point in the last batch gives no
      estimate (the code's NaN would make the whole epoch's estimate undefined); an
      infinite estimate counts as undefined too;
    * an undefined estimate at the first epoch is an error (the code fails there too,
      with an IndexError);
    * with ``method.warmup_epochs``, the warm-up epochs record no LID.

    Evaluation and the saved model are the loop's model, as for every method.
    """

    name = "d2l"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        training_set: SamplePass,
        *,
        epochs: int,
        options: D2LOptions | None = None,
        seed: int = 0,
        network: nn.Module | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        self.options = options if options is not None else D2LOptions()
        check_d2l_options(self.options)
        if not epochs >= 1:
            raise ValueError(f"d2l needs the run's epochs (>= 1) for its schedule, got {epochs}")
        self.epochs = int(epochs)
        self.training_set = training_set
        self.seed = int(seed)
        self.features = PenultimateFeatures(model if network is None else network)
        """The representation the LID is estimated on (``network``: the model uncompiled,
        whose layers the hook can see)."""
        self.lids: list[float] = []
        """The LID estimate of every epoch so far, undefined ones replaced."""
        self.turning_epoch = -1
        """The last epoch before the LID rose (the authors' count), -1 until then."""
        self.alpha = 1.0
        """The weight of the given label in this epoch's targets (1: plain cross-entropy)."""

    def begin_epoch(self, epoch: int) -> None:
        o = self.options
        chosen = lid_subset(len(self.training_set), o.subset, self.seed, epoch)
        features = self.training_set.subset(chosen)(self.features, _features)
        self.record(mean_lid(features, o.k, o.batch), epoch)

    def record(self, lid: float, epoch: int) -> None:
        """Add epoch ``epoch``'s LID estimate and decide this epoch's targets."""
        if math.isfinite(lid) and lid > 0:
            self.lids.append(float(lid))
        elif self.lids:
            self.lids.append(self.lids[-1])
        else:
            raise ValueError(
                f"d2l: the LID estimate of epoch {epoch} is undefined ({lid}): at least "
                f"{self.options.k + 1} samples of a batch share one representation. Raise "
                "method.d2l.k or method.d2l.batch, or check the model's penultimate layer"
            )
        o = self.options
        if self.turning_epoch < 0 and turning_point(self.lids, o.init_epoch, o.window):
            self.turning_epoch = epoch - 1
        if self.turning_epoch >= 0:
            self.alpha = lid_alpha(epoch, self.epochs, self.lids)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        if self.turning_epoch < 0:
            return losses.mean(), None
        probs = F.softmax(logits, dim=1)
        classes = probs.shape[1]
        predicted = F.one_hot(probs.detach().argmax(dim=1), classes).to(probs.dtype)
        given = F.one_hot(y, classes).to(probs.dtype)
        targets = self.alpha * given + (1.0 - self.alpha) * predicted
        probs = probs / probs.sum(dim=1, keepdim=True)
        probs = probs.clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
        return -(targets * torch.log(probs)).sum(dim=1).mean(), None

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "lids": list(self.lids),
            "turning_epoch": self.turning_epoch,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lids = [float(v) for v in state["lids"]]
        self.turning_epoch = int(state["turning_epoch"])
        self.alpha = float(state["alpha"])
