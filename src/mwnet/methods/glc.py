"""Gold Loss Correction (Hendrycks et al., NeurIPS 2018): estimate how labels are corrupted
from a small trusted set, then train again through that corruption."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

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
from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import StepOutput, next_meta_batch
from mwnet.methods.corruption_estimate import (
    fit_inverse_temperature,
    trusted_confusion_estimate,
    trusted_set_estimate,
)
from mwnet.methods.descriptor import SamplePass
from mwnet.methods.losses import forward_corrected_losses
from mwnet.methods.plain import PlainMethod
from mwnet.methods.two_phase import estimation_epochs, model_copy

GlcVariant = Literal["glc", "calibrated", "confusion"]
GLC_VARIANTS: tuple[str, ...] = typing.get_args(GlcVariant)


@dataclass
class GlcOptions:
    """``method.glc.*``."""

    estimate_epochs: int | None = None
    """epochs of the first phase (cross-entropy on the noisy labels) before C is estimated;
    null or 0: optim.epochs, as the authors do"""
    variant: GlcVariant = "glc"
    """how C is estimated on the trusted set: glc (mean softmax per true class) |
    calibrated (the same after a temperature fitted on the trusted set) | confusion
    (counts of argmax predictions per true class, smoothed: the authors' baseline)"""
    trusted_weight: float = 1.0
    """weight of a trusted sample relative to an untrusted one in the second phase's loss;
    1: the authors' (each sample of the union of both sets counts once)"""


def _probabilities(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.to(torch.float64), dim=1)


def _logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.float64)


class GoldLossCorrection(PlainMethod):
    """GLC: cross-entropy on the noisy labels, an estimate Ĉ of the corruption matrix from
    the trusted set, then training afresh through Ĉ.

    Phase 1, epochs [0, E): plain cross-entropy on the noisy training set (E =
    ``estimate_epochs``, by default the configured epochs). At the start of epoch E,
    :meth:`begin_epoch` runs the model over the trusted set (in eval mode, sharded over
    ranks and gathered, so every rank gets the same Ĉ) and sets row i of Ĉ to the mean
    softmax over the trusted samples of class i; then it resets the model to its weights
    at construction and clears the optimizer's state, and :meth:`restarts_at` tells the
    loop to run the learning-rate schedule again from its start. Phase 2, the configured
    epochs after E: each step draws a trusted batch besides the training batch and
    minimises

        a · mean_t −log (softmax(f(x_t)) Ĉ)[ỹ_t] + b · mean_g CE(f(x_g), y_g),

    a = N_s / (N_s + w·N_g), b = w·N_g / (N_s + w·N_g), with N_s untrusted and N_g trusted
    samples and w = ``trusted_weight``. Ĉ and the phase are in :meth:`state_dict`, so a
    resumed run trains through the same Ĉ; until the reset, so is the copy of the initial
    weights (a run resumed in phase 1 resets to them even if ``model.init_from`` changed).
    Evaluation and the saved model are the loop's model. Under data parallelism both means
    are over the global batches.

    Where this departs from the authors' code (github.com/mmazeika/glc, CIFAR/train_ours.py):

    * the authors draw phase-2 batches from the union of both sets, so a batch holds
      trusted samples in proportion N_g / (N_s + N_g) and its loss is the sum over the
      batch divided by the batch size. Here every step takes a whole trusted batch (the
      loop's meta stream) and the two means are weighted by the union's shares a and b
      (w = 1): the same expected gradient per step, with less noise in its trusted part;
      an epoch is a pass over the untrusted set (N_s / B steps, not (N_s + N_g) / B), and
      the trusted set is seen many times per epoch instead of once;
    * one forward over the training and trusted batches together (BatchNorm normalises
      their union, as it would a union batch); the authors run the two parts of a batch
      as two forwards;
    * the optimizer's momentum is cleared at the reset; the CIFAR script keeps it (its
      MNIST script starts a new optimizer), and its per-step cosine schedule is the
      loop's configured schedule here, run once per phase;
    * a class without trusted samples gets the identity row (the authors' mean of an
      empty set is NaN);
    * the authors' "adjusted" variant (Ĉ projected by a quadratic program, cvxpy, to
      match the noisy labels' base rates) is not implemented; "calibrated" fits the
      inverse temperature by bisection instead of cvxpy (the same convex minimum,
      searched within [2^-6, 2^6]).

    Args:
        meta_batches: endless trusted batches (phase 2).
        trusted: the pass over the trusted set that estimates Ĉ (``MethodContext.meta_set``).
        training_size: N_s, the number of untrusted training samples.
        epochs: the configured epochs (``optim.epochs``): E when ``estimate_epochs`` is
            None or 0.
    """

    name = "glc"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        trusted: SamplePass | None,
        *,
        training_size: int | None,
        epochs: int | None,
        estimate_epochs: int | None = None,
        variant: GlcVariant = "glc",
        trusted_weight: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        if variant not in GLC_VARIANTS:
            raise ValueError(f"glc variant must be one of {GLC_VARIANTS}, got {variant!r}")
        if not trusted_weight > 0:
            raise ValueError(f"glc trusted_weight must be > 0, got {trusted_weight!r}")
        if trusted is not None and len(trusted) == 0:
            raise ValueError(
                "glc estimates the label corruption on a trusted set, and this run has none "
                "(data.meta_source=auto); use data.meta_source=clean"
            )
        self.meta_batches = meta_batches
        self.trusted = trusted
        self.training_size = training_size
        self.variant = variant
        self.trusted_weight = float(trusted_weight)
        self.estimate_epochs = estimation_epochs("glc", estimate_epochs, epochs)
        self.extra_epochs = self.estimate_epochs
        self.initial: dict[str, torch.Tensor] | None = model_copy(model)
        self.corruption: torch.Tensor | None = None
        """Ĉ (K, K) in float64 on the CPU, from epoch E on; None before."""
        self.inverse_temperature: float | None = None
        """variant="calibrated": the β fitted on the trusted set."""
        self._log_corruption: torch.Tensor | None = None

    # -- phases ---------------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        if epoch != self.estimate_epochs or self.corruption is not None:
            return
        self._set_corruption(self.estimate())
        assert self.initial is not None
        self.model.load_state_dict(self.initial)
        self.optimizer.state.clear()
        self.initial = None  # the reset is done; checkpoints no longer carry the copy

    def restarts_at(self, epoch: int) -> bool:
        return epoch == self.estimate_epochs

    def estimate(self) -> torch.Tensor:
        """Ĉ from the model as it is now, on the trusted set (float64, CPU)."""
        if self.trusted is None:
            raise ValueError(
                "glc needs the pass over the trusted set (build_method(meta_set=...)) to "
                f"estimate the corruption matrix at epoch {self.estimate_epochs}"
            )
        labels = self.trusted.labels
        if self.variant == "calibrated":
            logits = self.trusted(self.model, _logits)
            self.inverse_temperature = fit_inverse_temperature(logits, labels)
            probabilities = torch.softmax(self.inverse_temperature * logits, dim=1)
        else:
            probabilities = self.trusted(self.model, _probabilities)
        if self.variant == "confusion":
            return trusted_confusion_estimate(probabilities, labels)
        return trusted_set_estimate(probabilities, labels)

    def _set_corruption(self, corruption: torch.Tensor) -> None:
        self.corruption = corruption.to("cpu", torch.float64)
        param = next(self.model.parameters())
        self._log_corruption = self.corruption.log().to(param.device, param.dtype)

    # -- steps ----------------------------------------------------------------------
    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return losses.mean(), None

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        if self.corruption is None:
            return super().step(x, y, index)
        self.batch_index = index
        with step_guard(self.model, enabled=self.checks):
            return self._corrected_step(x, y)

    def _shares(self) -> tuple[float, float]:
        """(a, b): the untrusted and trusted means' weights, from the sets' sizes."""
        if self.training_size is None or self.trusted is None:
            raise ValueError(
                "glc's second phase weighs the two sets by their sizes: build it with "
                "training_size and the trusted set's pass"
            )
        untrusted, trusted = self.training_size, self.trusted_weight * len(self.trusted)
        return untrusted / (untrusted + trusted), trusted / (untrusted + trusted)

    def _corrected_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_trusted, y_trusted = next_meta_batch(self.meta_batches)
        y, y_trusted = integer_labels(y), integer_labels(y_trusted)
        if self.checks:
            for xs, ys, which in ((x, y, "training"), (x_trusted, y_trusted, "meta")):
                check_batch(xs, ys, which)
                check_class_labels(ys, which)
            check_same_samples(x, x_trusted)
        n, m = len(y), len(y_trusted)
        with inputs_named(x, "training"):
            logits = self.model(torch.cat([x, x_trusted]))
        assert self._log_corruption is not None
        k = self._log_corruption.shape[0]
        if self.checks:
            check_logits(logits, n + m, "training")
            check_labels(y, logits.shape[-1], "training")
            check_labels(y_trusted, logits.shape[-1], "meta")
        if logits.shape[-1] != k:
            raise ValueError(
                f"the model outputs {logits.shape[-1]} classes but the corruption matrix was "
                f"estimated for {k}"
            )
        corrected = forward_corrected_losses(logits[:n], y, self._log_corruption)
        trusted = F.cross_entropy(logits[n:], y_trusted, reduction="none")
        untrusted_share, trusted_share = self._shares()
        counts = torch.tensor([n, m], dtype=corrected.dtype, device=corrected.device)
        if self.reducer is not None:
            (counts,) = self.reducer.sum([counts], "normaliser")
        weights = torch.cat(
            [
                torch.full_like(corrected, untrusted_share) / counts[0],
                torch.full_like(trusted, trusted_share) / counts[1],
            ]
        ).detach()
        both = torch.cat([corrected, trusted])
        trusted_mean = trusted.detach().sum() / counts[1]
        if self.reducer is None:
            loss = torch.dot(weights, both)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            _, loss, (trusted_mean,) = weighted_backward(
                both, weights, "none", self.optimizer, self.reducer, extras=[trusted_mean]
            )
        if self.checks:
            raise_if_not_finite(
                self.steps_done,
                training_loss=corrected.detach(),
                meta_loss=trusted.detach(),
                loss=loss.detach(),
                model_gradient=gradient_norms(self.optimizer),
            )
        self.optimizer.step()
        self.steps_done += 1
        with torch.no_grad():
            ce = F.cross_entropy(logits[:n], y, reduction="none")
        return StepOutput(loss=loss.detach(), losses=ce, weights=None, meta_loss=trusted_mean)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "corruption": None if self.corruption is None else self.corruption.clone(),
            "inverse_temperature": self.inverse_temperature,
            "initial": None if self.initial is None else model_copy(self.initial),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inverse_temperature = state["inverse_temperature"]
        self.initial = None if state["initial"] is None else model_copy(state["initial"])
        if state["corruption"] is None:
            self.corruption, self._log_corruption = None, None
        else:
            self._set_corruption(state["corruption"])
