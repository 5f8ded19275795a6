"""Learning to Reweight Examples (Ren et al., 2018): per-step weights from one meta gradient.

The ancestor of Meta-Weight-Net and its main baseline. Each step asks how the meta loss
would change if sample i's weight ε_i in a plain SGD step were raised from 0:

    θ̂(ε) = θ − α ∇_θ Σ_i ε_i L_i(θ),   g_i = ∂L_meta(θ̂(ε))/∂ε_i at ε = 0
         = −α ⟨∇_θ L_meta(θ), ∇_θ L_i(θ)⟩          (θ̂ = θ at ε = 0),

keeps the samples whose gradient agrees with the meta gradient, w̃_i = max(−g_i, 0),
normalises w = w̃ / Σ w̃ (all 0 if the sum is 0) and takes the real step on Σ_i w_i L_i.
No weighting net is learned; the weights are recomputed from scratch every step. The
scores g are :func:`mwnet.core.sample_meta_gradient.sample_meta_gradient`, which MW-Net's
``gate="meta-sign"`` shares.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet.core import normalize_weights
from mwnet.core.checks import (
    check_batch,
    check_class_labels,
    check_labels,
    check_logits,
    check_same_samples,
    gradient_norms,
    inputs_named,
    integer_labels,
    raise_if_not_finite,
    step_guard,
)
from mwnet.core.data_parallel import weighted_backward
from mwnet.core.hypergrad import HYPERGRAD_MODES
from mwnet.core.parameters import virtual_parameters
from mwnet.core.reducer import GradientReducer
from mwnet.core.sample_meta_gradient import sample_meta_gradient
from mwnet.core.snapshot import ForwardSnapshot
from mwnet.methods.base import Method, StepOutput, next_meta_batch
from mwnet.methods.hypergrad_mode import Hypergradient, hypergradient

ExactHypergrad = Literal["fast", "reverse"]


@dataclass
class L2RWOptions:
    """``method.l2rw.*``: L2RW's per-sample meta gradient is exact, so only the exact modes."""

    hypergrad: ExactHypergrad = "fast"
    """fast (forward-mode) | reverse (second order, the authors'): the same gradient"""

    def hypergradient(self, prefix: str = "") -> Hypergradient:
        """The configured hypergradient mode."""
        return hypergradient(self.hypergrad, prefix=prefix)


class L2RW(Method):
    """Learning to Reweight Examples on any model, without rewriting it.

    The inner products g_i cost one reverse pass (∇_θ L_meta on the meta batch at θ) and
    one forward-mode Jacobian-vector product of the per-sample training losses in the
    direction −α ∇_θ L_meta (``hypergrad="fast"``), instead of n per-sample gradients.
    ``hypergrad="reverse"`` differentiates the meta loss through the virtual step, as Ren et
    al. do: the same numbers, for models forward-mode AD cannot run. α is the current
    learning rate of each parameter's param group; only trainable parameters the optimizer
    holds take part. The real update reuses the real forward's graph, and that forward is
    the only pass that moves BatchNorm running statistics or other buffers; the extra passes
    run on copies, the replayed one with the real forward's dropout masks.

    Args:
        meta_batches: endless iterator of clean (x_meta, y_meta) on the model's device; one
            batch is drawn per step.
        hypergrad: ``"fast"`` (forward-mode JVP) or ``"reverse"`` (second order).
        checks: validate batches and labels and stop on NaN/Inf before updating.
        reducer: data parallelism, as for :class:`mwnet.MetaReweighter`: each rank passes its
            shards of the batches; the meta gradient is averaged over ranks, the weights are
            normalised over the global batch and the real gradient is summed.
    """

    name = "l2rw"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        *,
        hypergrad: Literal["fast", "reverse"] = "fast",
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__()
        if hypergrad not in HYPERGRAD_MODES:
            raise ValueError(f"hypergrad must be one of {HYPERGRAD_MODES}, got {hypergrad!r}")
        self.model = model
        self.optimizer = optimizer
        self.meta_batches = meta_batches
        self.hypergrad = hypergrad
        self.checks = checks
        self.reducer = reducer
        virtual_parameters(model, optimizer)  # fail at construction, not at the first step

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        with step_guard(self.model, enabled=self.checks):  # a failed step moves no buffer
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_meta, y_meta = next_meta_batch(self.meta_batches)
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        self._check_batches(x, y, x_meta, y_meta)
        state = ForwardSnapshot.capture(self.model, x.device)
        with inputs_named(x, "training"):
            output = self.model(x)
        losses = self._losses(output, y, "training")
        scores, meta_loss = self._scores(x, y, losses, state, x_meta, y_meta)
        if self.reducer is not None:
            return self._data_parallel_update(losses, scores, meta_loss, self.reducer)
        with torch.no_grad():
            weights = normalize_weights((-scores).clamp_min(0), "sum")
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                training_loss=losses.detach(),
                meta_loss=meta_loss,
                example_weights=weights,
            )
        loss = torch.dot(weights, losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._check_gradient()
        self.optimizer.step()
        self.steps_done += 1
        return StepOutput(
            loss=loss.detach(), losses=losses.detach(), weights=weights, meta_loss=meta_loss
        )

    def _data_parallel_update(
        self,
        losses: torch.Tensor,
        scores: torch.Tensor,
        meta_share: torch.Tensor,
        reducer: GradientReducer,
    ) -> StepOutput:
        """The real step with the weights normalised over the global batch; the ranks'
        shares of the meta loss are summed in the same all-reduce as the gradients."""
        raw = (-scores).clamp_min(0)
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                training_loss=losses.detach(),
                meta_loss=meta_share,
                example_weights=raw,
            )
        weights, loss, (meta_loss,) = weighted_backward(
            losses, raw, "sum", self.optimizer, reducer, extras=[meta_share]
        )
        self._check_gradient()
        self.optimizer.step()
        self.steps_done += 1
        return StepOutput(
            loss=loss.detach(), losses=losses.detach(), weights=weights, meta_loss=meta_loss
        )

    def meta_gradient(
        self, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """g = ∂L_meta(θ̂(ε))/∂ε at ε = 0, shape (n,), and L_meta(θ), changing no state.

        :meth:`step` computes the same internally (its weights are ``max(−g, 0)``,
        normalised); exposed to inspect and test the scores.
        """
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        self._check_batches(x, y, x_meta, y_meta)
        state = ForwardSnapshot.capture(self.model, x.device)
        with inputs_named(x, "training"):
            output = functional_call(self.model, state.buffer_copies(), (x,))
        losses = self._losses(output, y, "training")
        scores, meta_loss = self._scores(x, y, losses, state, x_meta, y_meta)
        if self.reducer is not None:
            (meta_loss,) = self.reducer.sum([meta_loss], "meta_loss")
        return scores, meta_loss

    def _check_gradient(self) -> None:
        if self.checks:
            raise_if_not_finite(self.steps_done, model_gradient=gradient_norms(self.optimizer))

    def _check_batches(self, x, y, x_meta, y_meta) -> None:
        if self.checks:
            for xs, ys, which in ((x, y, "training"), (x_meta, y_meta, "meta")):
                check_batch(xs, ys, which)
                check_class_labels(ys, which)
            check_same_samples(x, x_meta)

    def _losses(self, output: torch.Tensor, y: torch.Tensor, which: str) -> torch.Tensor:
        if self.checks:
            check_logits(output, y.shape[0], which)
            check_labels(y, output.shape[-1], which)
        return F.cross_entropy(output, y, reduction="none")

    def _scores(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        losses: torch.Tensor,
        state: ForwardSnapshot,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        names, params, group_index = virtual_parameters(self.model, self.optimizer)
        lrs = [float(self.optimizer.param_groups[i]["lr"]) for i in group_index]

        def meta_loss_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            out = functional_call(self.model, {**theta, **state.buffer_copies()}, (x_meta,))
            return self._losses(out, y_meta, "meta").mean()

        def losses_at(duals: dict[str, torch.Tensor]) -> torch.Tensor:
            with state.replaying_rng():  # the real forward's dropout masks, buffers on copies
                out = functional_call(self.model, {**duals, **state.buffer_copies()}, (x,))
            return F.cross_entropy(out, y, reduction="none")

        return sample_meta_gradient(
            names, params, lrs, losses, meta_loss_at, losses_at, self.hypergrad, self.reducer
        )
