"""MentorNet with its data-driven curriculum (Jiang et al., 2018): after a burn-in, a small
network learned from samples with known clean and corrupted labels weighs every sample."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.descriptor import SamplePass
from mwnet.methods.mentor import (
    Mentor,
    MentorFit,
    MentorShape,
    corrupt_for_mentor,
    fit_mentor,
    mentor_features,
    new_mentor,
)
from mwnet.methods.mentornet import MentorNetPD

LabelFeature = Literal["zero", "observed"]
LABEL_FEATURES: tuple[str, ...] = typing.get_args(LabelFeature)


@dataclass
class MentorNetDDOptions:
    """``method.mentornet_dd.*`` (the curriculum's moving average and burn-in are
    ``method.mentornet.*``, shared with mentornet-pd)."""

    mentor_noise_rate: float = 0.4
    """share of the trusted labels replaced by another class before the mentor is fitted
    to tell them from the clean ones (the authors fitted theirs to a run at 20% noise)"""
    mentor_steps: int = 500
    """full-batch Adam steps of the mentor's fit"""
    mentor_lr: float = 0.1
    """the mentor's Adam learning rate (the authors' starting rate)"""
    label_feature: LabelFeature = "zero"
    """the mentor's label input: zero (every sample 0, as the authors' code feeds it) |
    observed (the sample's class, one embedding row per class)"""
    label_dim: int = 2
    """width of the label embedding"""
    epoch_dim: int = 5
    """width of the (fixed, random) embedding of the percent of training"""
    lstm_hidden: int = 1
    """units of each direction of the mentor's bidirectional LSTM"""
    fc_hidden: int = 20
    """units of the mentor's tanh layer"""

    def __post_init__(self) -> None:
        check_mentornet_dd_options(self)


def check_mentornet_dd_options(o: MentorNetDDOptions) -> None:
    """Values that the types cannot check, with the key that holds each."""
    if not 0.0 < o.mentor_noise_rate < 1.0:
        raise ValueError(
            "method.mentornet_dd.mentor_noise_rate must lie in (0, 1): the mentor learns "
            f"from clean and corrupted labels both, got {o.mentor_noise_rate}"
        )
    if not (math.isfinite(o.mentor_lr) and o.mentor_lr > 0):
        raise ValueError(f"method.mentornet_dd.mentor_lr must be > 0, got {o.mentor_lr}")
    if o.label_feature not in LABEL_FEATURES:
        raise ValueError(
            f"method.mentornet_dd.label_feature must be one of {', '.join(LABEL_FEATURES)}, "
            f"got {o.label_feature!r}"
        )
    for key in ("mentor_steps", "label_dim", "epoch_dim", "lstm_hidden", "fc_hidden"):
        value = getattr(o, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"method.mentornet_dd.{key} must be an integer >= 1, got {value!r}")


def _log_probabilities(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every class's log-probability: the loss of any label a sample could be given."""
    return torch.log_softmax(logits.to(torch.float64), dim=1)


class MentorNetDD(MentorNetPD):
    """Minimises (1/n) Σ_i v_i ℓ_i with v_i the weight a data-driven mentor gives sample i
    (Jiang, Zhou, Leung, Li, Fei-Fei, "MentorNet: Learning Data-Driven Curriculum for Very
    Deep Neural Networks on Corrupted Labels", ICML 2018; code google/mentornet).

    The curriculum's frame is MentorNet-PD's (:class:`~mwnet.methods.mentornet.MentorNetPD`,
    options ``method.mentornet.*``): each step λ ← d·λ + (1 − d)·(p-th percentile of the
    global batch's losses), every sample weighs 1 in the burn-in, and the loss is divided
    by the batch size. What differs is v after the burn-in:

    1. At the start of the first epoch after the burn-in, :meth:`begin_epoch` runs the
       student over the trusted set (eval mode, sharded over ranks and gathered, so every
       rank fits the same mentor) and takes every class's log-probability. A seeded draw
       replaces ``mentor_noise_rate`` of the trusted labels by another class; each sample
       gets the features (ℓ, ℓ − λ, label, P) of its label as given, with λ the moving
       average as the burn-in left it and P the percent of training at this epoch, and
       the target "the label is clean".
    2. A fresh :class:`~mwnet.methods.mentor.Mentor` (seeded) is fitted to those targets:
       ``mentor_steps`` full-batch Adam steps on the binary cross-entropy
       (:func:`~mwnet.methods.mentor.fit_mentor`), on the CPU in float64.
    3. From then on a step gives sample i the weight v_i = sigmoid(mentor(ℓ_i, ℓ_i − λ,
       label, P)), with λ the moving average after this batch (as in MentorNet-PD) and the
       same P, held (the authors' ``fixed_epoch_after_burn_in``). No gradient reaches the
       mentor, which does not change again; it runs on the CPU in float64 (four numbers
       per sample), and every rank weighs its own shard with the shared λ.

    ``StepOutput.weights`` holds v; the mentor's weights, P, how its fit ended, λ and the
    epoch are in :meth:`state_dict`. Evaluation and the saved model are the loop's model.

    Departures from the authors' code:

    * The mentor is fitted online, once, to this run's own student at the end of the
      burn-in, on the trusted set with synthetic noise. The authors fit theirs offline
      (``training_mentornet/``), to losses dumped from a student trained on a CIFAR set
      with 20% noise whose true labels they knew, and then load it, fixed, into other
      runs. The student's losses for the fit come from a pass in eval mode without
      augmentation, where the steps' losses are of augmented batches in train mode.
    * Their features for the fit take ℓ minus one percentile of all the dumped losses
      (their 90th), where their student feeds ℓ − λ (the moving average); here both are
      ℓ − λ, built by the one function :func:`~mwnet.methods.mentor.mentor_features`.
    * The fit: full-batch Adam for ``mentor_steps`` steps at ``mentor_lr``, gradient norm
      clipped to 5 as theirs; theirs runs 30,000 steps of 32 samples, the rate decayed by
      0.9 every 1,000 steps from 0.1 (the default here).
    * The label input is 0 for every sample by default, as their student feeds it
      (``zero_labels``); ``label_feature=observed`` gives the class instead.
    * The burn-in is MentorNet-PD's (the epochs that start within 18% of training, or
      ``burn_in_epochs``); their DD student weighs every sample 1 while progress is below
      ``burn_in_epoch − 1`` = 17%, and holds the epoch input at 18 after it. Progress is
      counted per epoch, not per step.
    * No example drop-out (their runs zero the weights of a random 50% of each batch in
      the first 17% of training, 5% afterwards, and 90% in the last 5%), and weight decay
      is the optimizer's, not scaled by Σv/n, as in MentorNet-PD.
    * The mentor's output layer has no bias, which is what theirs computes (see
      :class:`~mwnet.methods.mentor.Mentor`); its history of losses is one step long, as
      their default.
    """

    name = "mentornet-dd"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        trusted: SamplePass | None,
        *,
        epochs: int | None,
        classes: int,
        percentile: float = 0.7,
        ema_decay: float = 0.5,
        burn_in_epochs: int | None = None,
        options: MentorNetDDOptions | None = None,
        seed: int = 0,
        network: nn.Module | None = None,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        super().__init__(
            model,
            optimizer,
            epochs=epochs,
            percentile=percentile,
            ema_decay=ema_decay,
            burn_in_epochs=burn_in_epochs,
            checks=checks,
            reducer=reducer,
        )
        self.options = options if options is not None else MentorNetDDOptions()
        check_mentornet_dd_options(self.options)
        if trusted is not None and len(trusted) == 0:
            raise ValueError(
                "mentornet-dd fits its mentor on a trusted set, and this run has none "
                "(data.meta_source=auto); use data.meta_source=clean"
            )
        self.trusted = trusted
        self.classes = int(classes)
        self.seed = int(seed)
        self.network = model if network is None else network
        """The student as the passes run it (the model uncompiled)."""
        o = self.options
        self.shape = MentorShape(
            label_rows=self.classes if o.label_feature == "observed" else 2,
            label_dim=o.label_dim,
            epoch_dim=o.epoch_dim,
            lstm_hidden=o.lstm_hidden,
            fc_hidden=o.fc_hidden,
        )
        self.mentor: Mentor | None = None
        """The fitted mentor (float64, CPU); None until the burn-in ends."""
        self.mentor_percent: int | None = None
        """P, the percent of training the mentor was fitted at and is fed ever after."""
        self.mentor_fit: MentorFit | None = None

    # -- the mentor -----------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if self.mentor is None and not self.burning_in():
            self.train_mentor()

    def label_feature(self, labels: torch.Tensor) -> torch.Tensor:
        """The mentor's label input for samples with ``labels``."""
        if self.options.label_feature == "observed":
            return labels
        return torch.zeros_like(labels)

    def mentor_training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fit's features (rows of :func:`mentor_features`) and targets (the label is
        clean), from the student as it is now on the trusted set with synthetic noise."""
        if self.trusted is None:
            raise ValueError(
                "mentornet-dd needs the pass over the trusted set (build_method(meta_set=...)) "
                f"to fit its mentor at epoch {self.epoch}"
            )
        log_p = self.trusted(self.network, _log_probabilities)
        if log_p.shape[1] != self.classes:
            raise ValueError(
                f"the model outputs {log_p.shape[1]} classes but mentornet-dd was built for "
                f"{self.classes}"
            )
        given, clean = corrupt_for_mentor(
            self.trusted.labels, self.classes, self.options.mentor_noise_rate, self.seed
        )
        losses = -log_p.gather(1, given[:, None])[:, 0]
        labels = self.label_feature(given)
        return mentor_features(losses, self.threshold, labels, self.percent()), clean

    def train_mentor(self) -> MentorFit:
        """Fit a fresh mentor now (see the class docstring), and use it from the next step."""
        features, clean = self.mentor_training_set()
        mentor = new_mentor(self.shape, self.seed)
        o = self.options
        fit = fit_mentor(mentor, features, clean, steps=o.mentor_steps, lr=o.mentor_lr)
        mentor.eval()
        self.mentor, self.mentor_percent, self.mentor_fit = mentor, self.percent(), fit
        return fit

    def curriculum(
        self, losses: torch.Tensor, threshold: float, labels: torch.Tensor | None
    ) -> torch.Tensor:
        if self.mentor is None or self.mentor_percent is None:
            raise RuntimeError(
                "mentornet-dd fits its mentor when the first epoch after the burn-in begins: "
                f"call begin_epoch({self.epoch}) before its steps"
            )
        if labels is None:
            labels = torch.zeros(len(losses), dtype=torch.long)
        features = mentor_features(
            losses, threshold, self.label_feature(labels), self.mentor_percent
        )
        with torch.no_grad():
            v = torch.sigmoid(self.mentor(features))
        return v.to(losses.device, losses.dtype)

    # -- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        mentor = None if self.mentor is None else self.mentor.state_dict()
        fit = None if self.mentor_fit is None else asdict(self.mentor_fit)
        return {
            **super().state_dict(),
            "mentor": mentor,
            "mentor_percent": self.mentor_percent,
            "mentor_fit": fit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["mentor"] is None:
            self.mentor = self.mentor_percent = self.mentor_fit = None
            return
        mentor = new_mentor(self.shape, self.seed)
        mentor.load_state_dict(state["mentor"])
        mentor.eval()
        self.mentor = mentor
        self.mentor_percent = int(state["mentor_percent"])
        fit = state.get("mentor_fit")
        self.mentor_fit = None if fit is None else MentorFit(**fit)
