"""Methods whose update is one forward and one backward of a loss of the batch alone."""

from __future__ import annotations

import abc

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
from mwnet.core.data_parallel import mean_backward
from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import Method, StepOutput


class PlainMethod(Method):
    """Cross-entropy-like baselines: no meta batch, no second pass.

    Subclasses only say how the per-sample cross-entropies turn into the minimised loss
    (:meth:`objective`); the checks, the update and the output are the same for all, which
    keeps the baselines comparable with each other and with the meta-learning methods.

    Every objective is a mean over the batch, so with a ``reducer`` (data parallelism, each
    rank passing its shard of the batch) the update uses the gradient of the mean over the
    global batch: the ranks' shard sums, summed, divided by the global count.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer
        self.checks = checks
        self.reducer = reducer
        self.batch_index: torch.Tensor | None = None
        """The training-set positions of the batch being stepped (see :meth:`Method.step`),
        for objectives that keep per-sample state."""

    @abc.abstractmethod
    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scalar loss to minimise from per-sample CE ``losses``, and the weights used."""

    def backward_over_ranks(
        self, loss: torch.Tensor, losses: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Under data parallelism: leave in ``.grad`` the gradient of the objective over
        the global batch, and return that objective. The default reads ``loss`` as a mean
        over this rank's samples (every objective of the form mean_i f_i); an objective
        normalised otherwise (a mean over selected samples) overrides this."""
        assert self.reducer is not None
        return mean_backward(loss, len(losses), self.optimizer, self.reducer)

    def global_batch(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every sample of the global batch, in batch order, on every rank
        (this rank's own in one process): for decisions over the whole batch (a quantile
        of its losses), which every rank must take alike."""
        if self.reducer is None:
            return values.detach()
        return self.reducer.gather(values.detach(), "selection")[0]

    def batch_kind(self) -> str:
        """How error messages name the batch being trained on."""
        return "training"

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        self.batch_index = index
        with step_guard(self.model, enabled=self.checks):  # a failed step moves no buffer
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        which = self.batch_kind()
        y = integer_labels(y)
        if self.checks:
            check_batch(x, y, which)
            check_class_labels(y, which)
        with inputs_named(x, which):
            logits = self.model(x)
        if self.checks:
            check_logits(logits, y.shape[0], which)
            check_labels(y, logits.shape[-1], which)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss, weights = self.objective(logits, losses, y)
        if self.reducer is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            loss = self.backward_over_ranks(loss, losses, weights)
        if self.checks:  # one check of the losses and of the update's gradient
            raise_if_not_finite(
                self.steps_done,
                training_loss=losses.detach(),
                loss=loss.detach(),
                model_gradient=gradient_norms(self.optimizer),
            )
        self.optimizer.step()
        self.steps_done += 1
        return StepOutput(
            loss=loss.detach(),
            losses=losses.detach(),
            weights=None if weights is None else weights.detach(),
            meta_loss=None,
        )
