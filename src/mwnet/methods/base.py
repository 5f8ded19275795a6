"""The one interface every training method implements, so the loop never special-cases one."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class StepOutput:
    """What one :meth:`Method.step` did, detached, so the loop can log any method alike."""

    loss: torch.Tensor
    """Scalar: the loss the update minimised."""
    losses: torch.Tensor
    """Per-sample cross-entropy losses of the training batch before the update, shape (n,)."""
    weights: torch.Tensor | None
    """Per-sample weights the update used, shape (n,); None for unweighted methods."""
    meta_loss: torch.Tensor | None
    """Loss on the meta batch this step, when the method computes one."""


class Method(abc.ABC):
    """A way of training a classifier: one optimisation step per batch, plus its own state.

    The model and its optimizer belong to the training loop, which saves and restores them;
    a method only owns what it adds (a weighting net, counters). Methods count their steps in
    ``steps_done`` so that error messages can name the step that failed.
    """

    name: str
    extra_epochs: int = 0
    """Epochs the loop runs after its configured schedule (the fine-tuning baseline's)."""

    def __init__(self) -> None:
        self.steps_done = 0

    @abc.abstractmethod
    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        """One optimisation step on a batch (inputs and integer labels, on the model's device).

        ``index`` holds each sample's position in the training set, for methods that keep
        per-sample state across epochs (ELR's targets, DivideMix's clean probabilities):
        the loop passes it for training batches when the method's descriptor says
        ``reads_index``; others are called with ``step(x, y)``.
        """

    def begin_epoch(self, epoch: int) -> None:
        """Called by the loop at the start of epoch ``epoch`` (from 0), before its steps, for
        methods whose behaviour follows the epoch (a schedule of meta updates). The method's
        state after it must depend only on the epoch and on :meth:`state_dict`'s contents,
        so that a resumed run does what an uninterrupted one does."""
        return None

    def source(self, epoch: int) -> str:
        """Which batches epoch ``epoch`` (from 0) trains on: ``"train"`` or ``"meta"``.

        The loop calls this at the start of every epoch, before that epoch's steps.
        """
        return "train"

    def restarts_at(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) starts training afresh, after a first phase that
        only served to estimate something (GLC's corruption matrix). The loop then runs
        the configured learning-rate schedule again from its start and forgets the best
        epochs so far, so that validation selects among the final phase's epochs only.
        Called after :meth:`begin_epoch` of that epoch, which resets the model's weights."""
        return False

    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks the method trains besides the loop's model (Co-teaching's peer),
        by name. They live in :meth:`state_dict`; the loop averages their BatchNorm
        statistics over ranks each epoch, like the model's. Evaluation and the saved
        model are the loop's model: the first network."""
        return {}

    def weighting_function(self, losses: torch.Tensor) -> torch.Tensor | None:
        """The learned map from per-sample loss to weight, if the method learns one (no grad):
        shape (n,), or (n, K) for one curve per class cluster."""
        return None

    def weighting_net(self) -> tuple[torch.nn.Module, str] | None:
        """The weighting net and the normalisation it is used with, for methods with one
        (saved as ``weight_net.pt`` at the end of a run, reusable in another)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything the method owns beyond the model and its optimizer, for checkpoints."""
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, so training continues exactly as without the restart."""
        self.steps_done = int(state["steps_done"])


def next_meta_batch(
    meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next meta batch; an exhausted stream is an error, not a silent StopIteration.

    A StopIteration escaping ``step`` would quietly end any generator-based loop around it.
    """
    try:
        return next(meta_batches)
    except StopIteration:
        raise RuntimeError(
            "meta_batches ran out; the methods need an endless iterator of meta batches "
            "(e.g. cycle over the meta set, reshuffling each pass)"
        ) from None
