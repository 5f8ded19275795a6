"""The S-Model (Goldberger & Ben-Reuven, ICLR 2017): a learned noise adaptation layer on
top of the classifier's softmax, trained with the noisy labels."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.corruption_estimate import noisy_label_confusion
from mwnet.methods.descriptor import SamplePass
from mwnet.methods.losses import forward_corrected_losses
from mwnet.methods.plain import PlainMethod
from mwnet.methods.two_phase import estimation_epochs

ConfusionKind = Literal["soft", "hard"]
CONFUSION_KINDS: tuple[str, ...] = typing.get_args(ConfusionKind)

LOG_FLOOR = 1e-8
"""Added to the confusion matrix before its log (the authors' script does so), so that a
never-seen (class, label) pair starts at log 1e-8, not at -inf."""


@dataclass
class SModelOptions:
    """``method.s_model.*``."""

    estimate_epochs: int | None = None
    """epochs of cross-entropy on the noisy labels before the noise layer is added; null or
    0: optim.epochs"""
    confusion: ConfusionKind = "soft"
    """how the layer's initial matrix counts the base network's predictions: soft (its
    probabilities, the paper's formula) | hard (its argmax, the authors' script)"""
    lr_factor: float = 1.0
    """the noise layer's learning rate as a multiple of the network's (it follows the
    schedule)"""


def _probabilities(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.to(torch.float64), dim=1)


class SModel(PlainMethod):
    """Cross-entropy, then the S-Model: p(noisy = j | x) = Σ_i p(true = i | x) θ[i, j].

    Phase 1, epochs [0, E): plain cross-entropy on the noisy labels (E =
    ``estimate_epochs``, by default the configured epochs). At the start of epoch E,
    :meth:`begin_epoch` runs the base network over the training set (eval mode, sharded
    over ranks and gathered, so every rank gets the same matrix), estimates the
    confusion θ₀[i, j] = Σ_t p_ti 1{z_t = j} / Σ_t p_ti of its predictions with the noisy
    labels z (``confusion="hard"``: counts of argmax predictions), sets the layer's
    parameters W = log(θ₀ + 1e-8) and clears the optimizer's state. Phase 2, the
    configured epochs after E: the base network (continuing from phase 1) and W train
    jointly on −log (softmax(f(x)) θ)[z] = −log Σ_i p(i | x) θ[i, z], θ = row-softmax(W).
    :meth:`restarts_at` E runs the learning-rate schedule again from its start (the
    weights are kept).

    W is a K × K parameter in its own group of the loop's optimizer (learning rate
    ``lr_factor`` times the network's, following the same schedule; no weight decay), so
    its gradient is summed over ranks with the network's and its momentum is checkpointed
    with the optimizer; W itself is in :meth:`state_dict`. Evaluation and the saved model
    are the base network, the loop's model: p(true | x) is its softmax.

    Where this departs from the authors' code (github.com/udibr/noisy_labels, Keras):

    * the initial confusion is soft by default (the paper's formula); their script counts
      argmax predictions unless told ``--pretrain_soft`` (``confusion="hard"`` here);
    * their second phase recompiles the model, i.e. starts a fresh Adam at its learning
      rate; here the optimizer's state is cleared and the configured schedule restarts;
    * early stopping on a noisy validation split is left to the loop's own selection;
    * a class the base network never predicts (hard counts only) gets the identity row
      (their row is 0/0 = NaN).

    Args:
        training: the pass over the (noisy) training set that estimates θ₀
            (``MethodContext.training_set``).
        num_classes: K, the model's number of outputs.
        epochs: the configured epochs (``optim.epochs``): E when ``estimate_epochs`` is
            None or 0.
    """

    name = "s-model"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        training: SamplePass | None,
        num_classes: int,
        *,
        epochs: int | None,
        estimate_epochs: int | None = None,
        confusion: ConfusionKind = "soft",
        lr_factor: float = 1.0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(model, optimizer, checks=checks, reducer=reducer)
        if confusion not in CONFUSION_KINDS:
            raise ValueError(
                f"s-model confusion must be one of {CONFUSION_KINDS}, got {confusion!r}"
            )
        if not lr_factor > 0:
            raise ValueError(f"s-model lr_factor must be > 0, got {lr_factor!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"s-model needs num_classes >= 2, got {num_classes!r}")
        self.training = training
        self.confusion = confusion
        self.lr_factor = float(lr_factor)
        self.estimate_epochs = estimation_epochs("s-model", estimate_epochs, epochs)
        self.extra_epochs = self.estimate_epochs
        param = next(model.parameters())
        self.channel = nn.Parameter(
            torch.zeros(num_classes, num_classes, dtype=param.dtype, device=param.device)
        )
        """W: θ = row-softmax(W); trained from epoch E on."""
        optimizer.add_param_group(
            {
                "params": [self.channel],
                "lr": optimizer.param_groups[0]["lr"] * self.lr_factor,
                "weight_decay": 0.0,
            }
        )
        self.initial_confusion: torch.Tensor | None = None
        """θ₀ (K, K) in float64 on the CPU, from epoch E on; None before."""

    def begin_epoch(self, epoch: int) -> None:
        if epoch != self.estimate_epochs or self.initial_confusion is not None:
            return
        confusion = self.estimate()
        with torch.no_grad():
            self.channel.copy_((confusion + LOG_FLOOR).log())
        self.initial_confusion = confusion
        self.optimizer.state.clear()

    def restarts_at(self, epoch: int) -> bool:
        return epoch == self.estimate_epochs

    def estimate(self) -> torch.Tensor:
        """θ₀ from the base network as it is now, on the training set (float64, CPU)."""
        if self.training is None:
            raise ValueError(
                "s-model needs the pass over the training set (build_method(training_set="
                f"...)) to initialise its noise layer at epoch {self.estimate_epochs}"
            )
        probabilities = self.training(self.model, _probabilities)
        if probabilities.shape[1] != self.channel.shape[0]:
            raise ValueError(
                f"the model outputs {probabilities.shape[1]} classes but the noise layer has "
                f"{self.channel.shape[0]}"
            )
        return noisy_label_confusion(
            probabilities, self.training.labels, hard=self.confusion == "hard"
        )

    def transition(self) -> torch.Tensor:
        """θ = row-softmax(W), p(noisy label j | true class i), detached."""
        return torch.softmax(self.channel.detach(), dim=1)

    def objective(
        self, logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        if self.initial_confusion is None:
            return losses.mean(), None
        log_theta = torch.log_softmax(self.channel, dim=1)
        return forward_corrected_losses(logits, y, log_theta).mean(), None

    def state_dict(self) -> dict[str, Any]:
        confusion = self.initial_confusion
        return {
            **super().state_dict(),
            "channel": self.channel.detach().clone(),
            "initial_confusion": None if confusion is None else confusion.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.channel.copy_(state["channel"])
        confusion = state["initial_confusion"]
        self.initial_confusion = None if confusion is None else confusion.clone()
