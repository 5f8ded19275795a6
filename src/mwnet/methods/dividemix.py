"""DivideMix (Li, Socher & Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised
Learning", ICLR 2020): two networks that divide the training set for each other into
labelled (likely clean) and unlabelled (likely noisy) samples, and learn from the division
by MixMatch-style semi-supervised learning."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core.checks import (
    check_batch,
    check_class_labels,
    check_labels,
    check_logits,
    gradient_norms,
    inputs_named,
    integer_labels,
    raise_if_not_finite,
    step_guard,
)
from mwnet.core.data_parallel import mean_backward, sum_backward
from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import Method, StepOutput
from mwnet.methods.descriptor import SamplePass, TrainingViews
from mwnet.methods.loss_mixture import clean_probability
from mwnet.methods.mixmatch import (
    co_guess,
    co_refine,
    linear_rampup,
    mix,
    mixup_draws,
    negative_entropy,
    semi_supervised_loss,
)

COMMS = "dividemix"
"""The category of the method's own collectives in the reducer's byte counts."""
PEER_SEED_STRIDE = 1_000_003
"""Spaces the fallback peer's seed from the run seed (when no ``new_network`` is given)."""


@dataclass
class DivideMixOptions:
    """``method.dividemix.*``; the defaults are the authors' CIFAR-10 settings."""

    warmup_epochs: int = 10
    """epochs in which both networks train with cross-entropy on the noisy labels before
    the first division (the authors: 10 on CIFAR-10, 30 on CIFAR-100)"""
    p_threshold: float = 0.5
    """a sample is labelled for a network when the other network's clean probability of
    it exceeds this"""
    T: float = 0.5
    """temperature that sharpens the refined and the guessed labels"""
    alpha: float = 4.0
    """MixUp's Beta(alpha, alpha)"""
    lambda_u: float = 25.0
    """weight of the unlabelled loss once ramped up (the authors: 0 for 20% symmetric
    noise, 25 for 50%, 150 for 80% and 90%, 0 for asymmetric noise on CIFAR-10)"""
    rampup_epochs: int = 16
    """epochs after the warm-up over which lambda_u ramps up linearly from 0"""
    penalty: bool = False
    """add the confidence penalty (negative entropy) to the warm-up's cross-entropy; the
    authors do so for asymmetric noise only"""

    def problem(self, prefix: str = "") -> str | None:
        """What is wrong with these values (keys named with ``prefix``), or None."""
        checks = [
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.p_threshold < 1, "p_threshold must lie in [0, 1)"),
            (self.T > 0, "T must be > 0"),
            (self.alpha > 0, "alpha must be > 0"),
            (self.lambda_u >= 0, "lambda_u must be >= 0"),
            (self.rampup_epochs >= 1, "rampup_epochs must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                return prefix + message
        return None


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy in float64, as a (n, 1) table (a training-set pass)."""
    return F.cross_entropy(logits.double(), labels, reduction="none")[:, None]


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every layer re-initialised (``reset_parameters``) from its
    own seed, without moving the global random state: the second network when the caller
    gives none (the training loop gives ``new_network(1)``)."""
    peer = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in peer.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + PEER_SEED_STRIDE)
        for module in peer.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return peer


@contextlib.contextmanager
def _modes(*modules: nn.Module) -> Iterator[None]:
    """Put back the train/eval mode of every submodule, however the block ends."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


class DivideMix(Method):
    """DivideMix with the training loop's model as network 1 and a peer as network 2.

    Each epoch after the warm-up (:meth:`begin_epoch`) runs both networks over the whole
    training set (eval mode, no augmentation), min-max normalises each one's per-sample
    losses and fits a two-component Gaussian mixture to them
    (:mod:`mwnet.methods.loss_mixture`); a sample's clean probability is its posterior
    under the low-mean component. Co-divide: network 1 learns from network 2's division
    and network 2 from network 1's. Within a batch, the samples whose clean probability
    exceeds ``p_threshold`` are labelled: their targets are their labels refined by the
    trained network's predictions on two augmented views (co-refinement); the others are
    unlabelled, with targets guessed by both networks on both views (co-guessing); both
    are sharpened, mixed (MixUp, λ' = max(λ, 1 − λ), λ ~ Beta(α, α)) and learned with
    L_x + λ_u(t)·L_u + the uniform-prior penalty (:mod:`mwnet.methods.mixmatch`). During
    the warm-up both networks learn with cross-entropy (plus, with ``penalty``, the
    confidence penalty). Evaluation, the saved model and ``mwnet eval`` use network 1
    alone: the authors report the average of both networks' outputs, which is not
    measured here.

    Where this departs from the authors' ``Train_cifar.py``:

    * The loop gives batches of the whole training set, one pass per epoch. The authors
      iterate over the labelled set and draw an equal-sized unlabelled batch for each
      labelled one; here each batch is split into its labelled and unlabelled samples,
      so their shares follow the division, and the mixed batch holds both views of each
      sample (2n rows). A batch with no labelled (unlabelled) sample has L_x (L_u) = 0.
    * The authors train network 1 for a whole epoch, then network 2 for an epoch with the
      updated network 1. Here every step trains both, from the same networks: network 1
      on its division (network 2's), network 2 on network 1's; each draws its own λ and
      permutation. The peer's learning rate follows the loop's schedule.
    * Views: the first is the loop's batch, the second the same samples augmented afresh
      (``augment``, the run's own augmentation, pad-crop and flip; without it, or with
      ``data.augment=false``, both views are the batch itself). The trained network's
      own predictions come from one train-mode pass per view over the whole batch (the
      authors' from passes over the labelled and the unlabelled batch apart, which
      BatchNorm normalises apart). In the warm-up network 2 trains on the second view of
      the same batches (the authors' two warm-up passes draw their own batches), with the
      loop's batch size (theirs is twice the batch).
    * λ_u's ramp counts the epoch's fraction in samples seen rather than in batches of the
      labelled set. The losses of the division are in float64; the mixture is fitted by
      :func:`~mwnet.methods.loss_mixture.fit_loss_mixture` (deterministic k-means start
      where sklearn's is random). The authors' averaging of the last 5 epochs' losses at
      90% noise is not done. Optimiser and schedule are the run's (``optim.*``), not the
      authors' SGD (lr 0.02, momentum 0.9, weight decay 5e-4, divided by ten at epoch
      150).
    * ``method.warmup_epochs`` (the loop's cross-entropy warm-up of network 1 alone)
      comes before and apart from this method's ``warmup_epochs``, in which both train.

    Data parallelism (``reducer``): each rank gets its shard of the batch. The division is
    made from the gathered losses (identical on every rank). The batch's first view, its
    positions and each rank's targets are gathered, and the second view is drawn over the
    global batch from the run seed and step, so every rank mixes the same global rows
    with the same λ and permutation; each rank then trains on its contiguous share of the
    mixed rows, with L_x, L_u and the prior's mean prediction normalised over the global
    batch, and the gradients are summed over ranks. With BatchNorm each rank normalises
    its own rows, as in every method here.

    What the loop records: ``weights`` are the clean probabilities network 1 learned from
    (network 2's division; None in the warm-up), so ``mean_weight_clean`` and
    ``mean_weight_corrupted`` show how well the division separates the noisy labels.

    Args:
        model, optimizer: network 1 and its optimizer (the loop's).
        options: :class:`DivideMixOptions`.
        peer: network 2, initialised apart (the loop's ``new_network(1)``); default a copy
            of ``model`` re-initialised from ``seed`` (:func:`fresh_copy`).
        new_optimizer: builds network 2's optimizer; default ``optimizer``'s class with
            its defaults.
        training_set: the per-sample pass over the training set that the division needs
            (:class:`~mwnet.methods.descriptor.SamplePass`), in the order of ``index``.
        augment: fresh views of training samples by position
            (:data:`~mwnet.methods.descriptor.TrainingViews`); None: the batch twice.
        seed: the run's seed, for the second views and MixUp's draws.
        checks: the usual input and non-finite checks (a failed step updates nothing).
        reducer: data parallelism (see above).
    """

    name = "dividemix"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        options: DivideMixOptions | None = None,
        peer: nn.Module | None = None,
        new_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        training_set: SamplePass | None = None,
        augment: TrainingViews | None = None,
        seed: int = 0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__()
        self.options = options if options is not None else DivideMixOptions()
        problem = self.options.problem("method.dividemix.")
        if problem is not None:
            raise ValueError(problem)
        self.model = model
        self.optimizer = optimizer
        self.peer = peer if peer is not None else fresh_copy(model, seed)
        if new_optimizer is None:
            self.peer_optimizer = type(optimizer)(self.peer.parameters(), **optimizer.defaults)
        else:
            self.peer_optimizer = new_optimizer(self.peer.parameters())
        self.training_set = training_set
        self.augment = augment
        self.seed = int(seed) % 2**63
        self.checks = checks
        self.reducer = reducer
        self.epoch = 0
        self.seen = 0
        """Samples of the current epoch trained on so far (λ_u's ramp)."""
        self.clean: torch.Tensor | None = None
        """(2, N) float64: row k the clean probability of every training sample from
        network k+1's losses (network 1 learns from row 1, network 2 from row 0); None
        before the first division."""
        self.mixtures: list[dict[str, Any]] = []
        """The last fits (means, variances, weights, EM rounds), network 1's first."""

    # -- the division -------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.seen = int(epoch), 0
        if epoch >= self.options.warmup_epochs:
            self.divide()

    def divide(self) -> None:
        """Each network's clean probabilities of all training samples (see the class)."""
        if self.training_set is None:
            raise ValueError(
                "dividemix divides the training set after its warm-up, which needs a pass "
                "over it: build it with training_set=... (the training loop gives one)"
            )
        rows, fits = [], []
        for network in (self.model, self.peer):
            losses = self.training_set(network, _cross_entropy)[:, 0].numpy()
            probability, fit = clean_probability(losses)
            rows.append(torch.from_numpy(probability))
            fits.append(fit.state())
        self.clean = torch.stack(rows)
        self.mixtures = fits

    def networks(self) -> dict[str, nn.Module]:
        return {"peer": self.peer}

    # -- steps ----------------------------------------------------------------------
    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        which = "training"
        y = integer_labels(y)
        if self.checks:
            check_batch(x, y, which)
            check_class_labels(y, which)
        for mine, theirs in zip(
            self.peer_optimizer.param_groups, self.optimizer.param_groups, strict=True
        ):
            mine["lr"] = theirs["lr"]
        guard = self.checks
        with step_guard(self.model, enabled=guard), step_guard(self.peer, enabled=guard):
            with _modes(self.model, self.peer):
                if self.epoch < self.options.warmup_epochs:
                    out = self._warmup_step(x, y, index)
                else:
                    out = self._mixmatch_step(x, y, index)
            self.optimizer.step()
            self.peer_optimizer.step()
        self.steps_done += 1
        return out

    def _global(self, local: torch.Tensor) -> torch.Tensor:
        """The global batch's rows from this rank's shard."""
        return local if self.reducer is None else self.reducer.gather(local, COMMS)[0]

    def _local(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous shard of global rows (the loop's sharding)."""
        if self.reducer is None:
            return rows
        return rows.tensor_split(self.reducer.world_size)[self.reducer.rank]

    def _second_view(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The global batch augmented afresh (seeded by run and step), or ``x`` itself."""
        if self.augment is None or index is None:
            return x
        seed = int(np.random.default_rng([self.seed, self.steps_done, 0]).integers(2**62))
        return self.augment(index, seed)

    def _forward(self, network: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
        with inputs_named(x, "training"):
            logits = network(x)
        if self.checks:
            check_logits(logits, n, "training")
        return logits

    def _mean_backward(
        self, per_sample: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> torch.Tensor:
        if self.reducer is None:
            optimizer.zero_grad(set_to_none=True)
            loss = per_sample.mean()
            loss.backward()
            return loss.detach()
        return mean_backward(per_sample.mean(), len(per_sample), optimizer, self.reducer)

    def _check(self, **values: torch.Tensor | None) -> None:
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                **values,
                model_gradient=gradient_norms(self.optimizer),
                peer_gradient=gradient_norms(self.peer_optimizer),
            )

    def _warmup_step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> StepOutput:
        """Cross-entropy on the noisy labels for both networks (network 2 on the second
        view), plus the confidence penalty if asked."""
        self.model.train()
        self.peer.train()
        if self.augment is not None and index is not None:
            x_peer = self._local(self._second_view(x, self._global(index)))
        else:
            x_peer = x
        n = y.shape[0]
        logits = self._forward(self.model, x, n)
        if self.checks:
            check_labels(y, logits.shape[-1], "training")
        peer_logits = self._forward(self.peer, x_peer, n)
        losses = F.cross_entropy(logits, y, reduction="none")
        peer_losses = F.cross_entropy(peer_logits, y, reduction="none")
        objective, peer_objective = losses, peer_losses
        if self.options.penalty:
            objective = losses + negative_entropy(logits)
            peer_objective = peer_losses + negative_entropy(peer_logits)
        loss = self._mean_backward(objective, self.optimizer)
        peer_loss = self._mean_backward(peer_objective, self.peer_optimizer)
        self._check(
            training_loss=losses.detach(),
            peer_training_loss=peer_losses.detach(),
            loss=loss,
            peer_loss=peer_loss,
        )
        return StepOutput(loss=loss, losses=losses.detach(), weights=None, meta_loss=None)

    def _mixmatch_step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> StepOutput:
        if index is None:
            raise ValueError(
                "dividemix trains on its division after the warm-up, so step needs each "
                "sample's position in the training set (index=...); the training loop "
                "passes it"
            )
        if self.clean is None:
            raise RuntimeError(
                f"dividemix has no division at epoch {self.epoch}: call begin_epoch(epoch) "
                "at the start of every epoch (the training loop does)"
            )
        o = self.options
        index_all, x_all = self._global(index), self._global(x)
        x2_all = self._second_view(x_all, index_all)
        x2 = self._local(x2_all)
        n_all = index_all.shape[0]
        clean_all = self.clean[:, index_all.cpu()]
        labelled_all = (clean_all > o.p_threshold).to(x.device)  # decided in float64
        clean_all = clean_all.to(x.device, x.dtype)
        current = self.epoch + self.seen / self.clean.shape[1]
        lambda_u = linear_rampup(current, o.warmup_epochs, o.rampup_epochs, o.lambda_u)
        results = []
        for k, (network, other) in enumerate(((self.model, self.peer), (self.peer, self.model))):
            clean = clean_all[1 - k]  # co-divide: the other network's division
            optimizer = self.optimizer if k == 0 else self.peer_optimizer
            labelled = labelled_all[1 - k]
            targets, first_logits = self._targets(
                network, other, x, x2, y, self._local(clean), self._local(labelled)
            )
            losses = F.cross_entropy(first_logits, y, reduction="none")
            loss = self._mixed_loss(
                network, optimizer, k, x_all, x2_all, self._global(targets), labelled, lambda_u
            )
            results.append((loss, losses))
            if self.checks and k == 0:
                check_labels(y, first_logits.shape[-1], "training")
        (loss, losses), (peer_loss, peer_losses) = results
        self._check(
            training_loss=losses, peer_training_loss=peer_losses, loss=loss, peer_loss=peer_loss
        )
        self.seen += n_all
        weights = self._local(clean_all[1])
        return StepOutput(loss=loss, losses=losses, weights=weights, meta_loss=None)

    @torch.no_grad()
    def _targets(
        self,
        network: nn.Module,
        other: nn.Module,
        x: torch.Tensor,
        x2: torch.Tensor,
        y: torch.Tensor,
        clean: torch.Tensor,
        labelled: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's refined (labelled) and guessed (unlabelled) targets, and the trained
        network's logits on the first view. As the authors do, the trained network runs
        in train mode and the other one in eval mode."""
        network.train()
        other.eval()
        n = y.shape[0]
        logits = self._forward(network, x, n)
        own = [torch.softmax(logits, dim=1), torch.softmax(self._forward(network, x2, n), dim=1)]
        unlabelled = ~labelled
        targets = torch.empty_like(own[0])
        if bool(labelled.any()):
            views = [p[labelled] for p in own]
            refined = co_refine(views, y[labelled], clean[labelled], self.options.T)
            targets[labelled] = refined
        if bool(unlabelled.any()):
            m = int(unlabelled.sum())
            theirs = [torch.softmax(self._forward(other, v[unlabelled], m), dim=1) for v in (x, x2)]
            views = [p[unlabelled] for p in own] + theirs
            targets[unlabelled] = co_guess(views, self.options.T)
        other.train()
        return targets, logits

    def _mixed_loss(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        k: int,
        x_all: torch.Tensor,
        x2_all: torch.Tensor,
        targets_all: torch.Tensor,
        labelled: torch.Tensor,
        lambda_u: float,
    ) -> torch.Tensor:
        """Mix the global batch's 2n rows (labelled views first, as the authors order
        them), train on this rank's share and set ``network``'s gradient; the global
        loss."""
        network.train()
        chosen, rest = labelled.nonzero()[:, 0], (~labelled).nonzero()[:, 0]
        rows = torch.cat([x_all[chosen], x2_all[chosen], x_all[rest], x2_all[rest]])
        row_targets = torch.cat(
            [targets_all[chosen], targets_all[chosen], targets_all[rest], targets_all[rest]]
        )
        m = rows.shape[0]
        lam, permutation = mixup_draws(self.seed, self.steps_done, k + 1, self.options.alpha, m)
        mixed, mixed_targets = mix(rows, row_targets, lam, permutation.to(rows.device))
        mine = self._local(torch.arange(m, device=rows.device))
        labelled_rows = 2 * chosen.shape[0]
        logits = self._forward(network, mixed[mine], mine.shape[0])
        probability_sum = torch.softmax(logits, dim=1).sum(dim=0)
        if self.reducer is not None:
            (probability_sum,) = self.reducer.sum_differentiable([probability_sum], COMMS, COMMS)
        parts = semi_supervised_loss(
            logits,
            mixed_targets[mine],
            mine < labelled_rows,
            labelled_rows,
            m - labelled_rows,
            probability_sum / m,
        )
        ranks = 1 if self.reducer is None else self.reducer.world_size
        objective = parts.labelled + lambda_u * parts.unlabelled + parts.penalty / ranks
        if self.reducer is None:
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            return objective.detach()
        return sum_backward(objective, optimizer, self.reducer)[0]

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "peer": self.peer.state_dict(),
            "peer_optimizer": self.peer_optimizer.state_dict(),
            "epoch": self.epoch,
            "seen": self.seen,
            "clean": None if self.clean is None else self.clean.clone(),
            "mixtures": copy.deepcopy(self.mixtures),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])
        self.epoch = int(state["epoch"])
        self.seen = int(state["seen"])
        clean = state["clean"]
        self.clean = None if clean is None else clean.clone()
        self.mixtures = copy.deepcopy(state["mixtures"])
