"""Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with
Extremely Noisy Labels", NeurIPS 2018): two networks pick clean-looking samples for each
other.

Deep networks fit clean labels before noisy ones, so early in training the samples with a
small loss are mostly correctly labelled. Co-teaching trains two networks at once; on every
batch each keeps the ``R(T) = 1 - τ(T)`` fraction of samples with the smallest loss under
*itself* and hands that set to the *other* network, which is updated on it. Two networks
initialised differently make different mistakes, so each filters the other's errors
instead of confirming its own (what a single network choosing its own small-loss samples
would do). ``τ(T)``, the forget rate, grows from 0 to its final value over the first
epochs, while the networks are still learning the clean patterns.

Departures from the authors' code (github.com/bhanML/Co-teaching, ``loss.py``, ``main.py``):

* Optimizer: the authors train both networks with Adam (lr 0.001, decayed linearly to 0
  from epoch 80, β1 0.9 then 0.1). Here both networks use the run's optimizer (SGD with
  ``optim.*``) and learning-rate schedule: the peer's optimizer is a fresh one of the same
  settings, and its learning rate is copied from the loop's optimizer at every step.
* Loss scale: the authors' ``loss_coteaching`` returns the mean cross-entropy over the kept
  samples divided once more by their number. Adam is invariant to a constant scale of the
  gradient (up to its ε), so there it changes nearly nothing; under SGD it would divide the
  learning rate by the batch size. Here each network minimises the mean over its kept
  samples, as the paper's update on the exchanged set reads.
* Epochs: the authors' epoch 0 only evaluates the untrained networks, and training epoch
  ``e`` (from 1) forgets ``rate_schedule[e]``, so their first training epoch already drops
  ``τ / (num_gradual - 1)``. Here epoch ``e`` counts from 0 (the loop's epochs) and forgets
  ``rate_schedule[e]``: the first epoch keeps every sample. The schedule is the authors'
  formula otherwise, defined for any epoch (theirs fails when ``num_gradual`` exceeds the
  number of epochs), and keeps its quirk for ``exponent != 1``: the ramp ends at ``τ^c``
  and the rate then steps to ``τ``.
* ``forget_rate``: the authors default it to the noise rate of the synthetic corruption. A
  method's options do not see the data's settings, so here it is an option of its own,
  0.2 by default (the authors' default noise rate); set it to ``data.noise_rate``.
* Ties: the authors sort the losses with NumPy's default (unstable) sort; here the sort is
  stable (equal losses in batch order), so a selection is reproducible and the same on
  every rank.
* A batch smaller than ``1 / (1 - τ)`` keeps ``int((1 - τ) n) = 0`` samples, where the
  authors' loss is 0/0; here at least one sample (the smallest loss) is kept.
* The authors cap an epoch at 401 batches (``num_iter_per_epoch``); here an epoch is every
  batch of the training set, as for every method.
* The authors evaluate both networks; here evaluation, the saved model and the checkpoints'
  ``model`` are network 1 (the loop's model); the peer is saved in the method's state. The
  loop's records stand in for their "pure ratio": each sample's weight is 1 when network 1
  trained on it, and with synthetic noise the loop logs the weight of clean and corrupted
  samples.
* ``method.warmup_epochs`` (not in the paper) trains network 1 alone with cross-entropy;
  the peer waits at its initialisation.

Under torchrun each rank holds a shard of the batch: the per-sample losses of both networks
are gathered, every rank selects over the global batch (the same selection as one process,
the same on every rank), backpropagates its own selected samples divided by the global
number kept, and both networks' gradients are summed over the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
from mwnet.core.data_parallel import weighted_backward
from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import Method, StepOutput


@dataclass
class CoTeachingOptions:
    """``method.co_teaching.*``."""

    forget_rate: float = 0.2
    """τ: the share of each batch a network finally forgets, in [0, 1) (the authors set it
    to the noise rate)"""
    num_gradual: int = 10
    """T_k: epochs over which the forget rate ramps up from 0"""
    exponent: float = 1.0
    """c: the ramp climbs to τ^c (the authors' form), > 0"""


def check_co_teaching_options(forget_rate: float, num_gradual: int, exponent: float) -> None:
    """Values the option types cannot check.

    Raises:
        ValueError: naming the option and its range.
    """
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(
            f"method.co_teaching.forget_rate={forget_rate} must lie in [0, 1): the share of "
            "each batch a network forgets (e.g. the noise rate)"
        )
    if isinstance(num_gradual, bool) or int(num_gradual) != num_gradual or num_gradual < 0:
        raise ValueError(
            f"method.co_teaching.num_gradual={num_gradual} must be a whole number >= 0 (epochs "
            "of the forget rate's ramp; 0: no ramp)"
        )
    if not exponent > 0:
        raise ValueError(f"method.co_teaching.exponent={exponent} must be > 0")


def forget_rate_at(epoch: int, forget_rate: float, num_gradual: int, exponent: float) -> float:
    """The authors' ``rate_schedule[epoch]``: ``np.linspace(0, τ^c, T_k)[epoch]`` for the
    first ``T_k`` epochs, then ``τ`` (epochs from 0; see the module docstring)."""
    if epoch < 0:
        raise ValueError(f"epochs count from 0, got {epoch}")
    if epoch < num_gradual:
        return float(np.linspace(0.0, forget_rate**exponent, num_gradual)[epoch])
    return float(forget_rate)


def kept_count(forget_rate: float, n: int) -> int:
    """How many of ``n`` samples a network keeps: the authors' ``int((1 - τ) n)``, and at
    least one."""
    return max(int((1 - forget_rate) * n), 1)


def small_loss_mask(losses: torch.Tensor, keep: int) -> torch.Tensor:
    """1 for the ``keep`` samples of smallest loss (ties in batch order), 0 for the rest,
    in ``losses``' dtype."""
    chosen = torch.argsort(losses.detach(), stable=True)[:keep]
    mask = torch.zeros_like(losses.detach())
    mask[chosen] = 1
    return mask


class CoTeaching(Method):
    """Co-teaching: the loop's model (network 1) and a peer (network 2) each trained on the
    small-loss samples of the other (see the module docstring for the paper and every
    departure from the authors' code).

    ``StepOutput.losses`` are network 1's per-sample cross-entropies, ``weights`` its 0/1
    selection (the samples network 2 found small-loss, which network 1 was trained on) and
    ``loss`` the mean over them. Evaluation and the saved model are network 1;
    :meth:`networks` returns the peer.

    Args:
        model, optimizer: network 1 and its optimizer (the loop's).
        peer: network 2, of the same architecture, initialised differently.
        peer_optimizer: its optimizer; its learning rate follows ``optimizer``'s at every
            step (so the loop's schedule drives both).
        forget_rate, num_gradual, exponent: the forget-rate schedule
            (:func:`forget_rate_at`).
        reducer: data parallelism; the batches given to :meth:`step` are then this
            rank's shards, and the selection is over the global batch.
    """

    name = "co-teaching"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        peer: nn.Module,
        peer_optimizer: torch.optim.Optimizer,
        *,
        forget_rate: float = 0.2,
        num_gradual: int = 10,
        exponent: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__()
        check_co_teaching_options(forget_rate, num_gradual, exponent)
        if peer is model:
            raise ValueError("co-teaching needs two networks: peer is the model itself")
        if len(peer_optimizer.param_groups) != len(optimizer.param_groups):
            raise ValueError(
                f"the peer's optimizer has {len(peer_optimizer.param_groups)} parameter "
                f"group(s) and the model's {len(optimizer.param_groups)}; give them the same "
                "groups, so that the peer's learning rates follow the model's"
            )
        self.model, self.optimizer = model, optimizer
        self.peer, self.peer_optimizer = peer, peer_optimizer
        self.forget_rate = float(forget_rate)
        self.num_gradual = int(num_gradual)
        self.exponent = float(exponent)
        self.checks = checks
        self.reducer = reducer
        self.epoch = 0
        self.rate = self.forget_rate_at(0)
        """The forget rate of the current epoch."""

    def forget_rate_at(self, epoch: int) -> float:
        """τ(epoch) of this method's schedule."""
        return forget_rate_at(epoch, self.forget_rate, self.num_gradual, self.exponent)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.rate = self.forget_rate_at(self.epoch)

    def networks(self) -> dict[str, nn.Module]:
        """The peer (network 2). Evaluation and the saved model are network 1, the loop's."""
        return {"peer": self.peer}

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        # a failed step moves neither network's BatchNorm statistics
        with (
            step_guard(self.model, enabled=self.checks),
            step_guard(self.peer, enabled=self.checks),
        ):
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        y = integer_labels(y)
        if self.checks:
            check_batch(x, y, "training")
            check_class_labels(y, "training")
        self.peer.train(self.model.training)
        for mine, theirs in zip(
            self.peer_optimizer.param_groups, self.optimizer.param_groups, strict=True
        ):
            mine["lr"] = theirs["lr"]
        with inputs_named(x, "training"):
            logits = self.model(x)
            peer_logits = self.peer(x)
        if self.checks:
            for out in (logits, peer_logits):
                check_logits(out, y.shape[0], "training")
            check_labels(y, logits.shape[-1], "training")
        losses = F.cross_entropy(logits, y, reduction="none")
        peer_losses = F.cross_entropy(peer_logits, y, reduction="none")
        both, offset = self._global(torch.stack([losses.detach(), peer_losses.detach()], 1))
        if self.checks:  # the global losses: every rank stops alike
            raise_if_not_finite(
                self.steps_done, training_loss=both[:, 0], peer_training_loss=both[:, 1]
            )
        keep = kept_count(self.rate, both.shape[0])
        mine = slice(offset, offset + losses.shape[0])
        weights = small_loss_mask(both[:, 1], keep)[mine]  # the peer's pick trains the model
        peer_weights = small_loss_mask(both[:, 0], keep)[mine]  # and the model's the peer
        loss = self._backward(losses, weights, keep, self.optimizer)
        peer_loss = self._backward(peer_losses, peer_weights, keep, self.peer_optimizer)
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                loss=loss.detach(),
                peer_loss=peer_loss.detach(),
                model_gradient=gradient_norms(self.optimizer),
                peer_gradient=gradient_norms(self.peer_optimizer),
            )
        self.optimizer.step()
        self.peer_optimizer.step()
        self.steps_done += 1
        return StepOutput(
            loss=loss.detach(), losses=losses.detach(), weights=weights, meta_loss=None
        )

    def _global(self, local: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The global batch's rows of ``local`` and where this rank's begin."""
        if self.reducer is None:
            return local, 0
        rows, sizes = self.reducer.gather(local, "selection")
        return rows, sum(sizes[: self.reducer.rank])

    def _backward(
        self,
        losses: torch.Tensor,
        weights: torch.Tensor,
        keep: int,
        optimizer: torch.optim.Optimizer,
    ) -> torch.Tensor:
        """Leave in ``.grad`` the gradient of the mean of ``losses`` over the samples
        ``weights`` keeps (``keep`` of them in the global batch); return that mean."""
        if self.reducer is None:
            loss = torch.dot(weights, losses) / keep
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss
        # "sum": divided by the global sum of the 0/1 weights, the number kept
        _, loss, _ = weighted_backward(losses, weights, "sum", optimizer, self.reducer)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "epoch": self.epoch,
            "peer": self.peer.state_dict(),
            "peer_optimizer": self.peer_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.begin_epoch(int(state["epoch"]))
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])


def peer_optimizer_like(
    optimizer: torch.optim.Optimizer,
) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    """An optimizer factory of ``optimizer``'s class and settings, for a peer network when
    the caller gives none."""
    return lambda parameters: type(optimizer)(parameters, **optimizer.defaults)
