"""Meta-Weight-Net behind the methods interface: the core's MetaReweighter, configured by name."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core import WEIGHT_INITS, ClassAwareWeightNet, MetaReweighter, WeightNet, start_flat
from mwnet.core.checks import (
    check_batch,
    check_class_labels,
    check_labels,
    integer_labels,
    step_guard,
)
from mwnet.core.famus import LayerSampling
from mwnet.core.hypergrad import HYPERGRAD_MODES, HypergradMode
from mwnet.core.objective import (
    WeightedLoss,
    label_correction_loss,
    label_correction_mixup_loss,
)
from mwnet.core.reducer import GradientReducer
from mwnet.core.reweighter import GATES, Gate, Normalization
from mwnet.core.virtual_step import VirtualStepKind
from mwnet.core.weight_inputs import (
    DEFAULT_DECAY,
    DEFAULT_HISTORY,
    LOSS_ONLY,
    check_decay,
    check_history,
    check_inputs,
    per_sample,
    reads_dynamics,
    reads_history,
)
from mwnet.core.weight_net import WeightInit, net_inputs
from mwnet.methods.base import Method, StepOutput, next_meta_batch
from mwnet.methods.hypergrad_mode import Hypergradient, hypergradient
from mwnet.methods.meta_schedule import CURVE_LOSSES, UpdateSchedule, parse_interval_schedule

WeightOptimizer = Literal["adam", "sgd"]
WEIGHT_OPTIMIZERS: tuple[str, ...] = typing.get_args(WeightOptimizer)


@dataclass
class WeightingOptions:
    """``method.mwnet.*``: what MW-Net, CMW-Net and their label-correcting variants (-sl)
    read alike: the hypergradient, the normalisation, the update schedule, the weighting
    net, its optimizer, and a net learned elsewhere."""

    hypergrad: HypergradMode = "fast"
    """fast | reverse (exact, the same gradient) | head | partial (the virtual step of a top
    part only) | famus (the meta gradient through a few layers only): see
    docs/PERFORMANCE.md"""
    low_memory: bool = False
    """hypergrad=fast only: free the training graph before the meta pass and run the forward
    again for the real update (same result, about a plain step's peak memory)"""
    head: str | None = None
    """hypergrad=head only: module name of the final nn.Linear; None: detected"""
    partial: str | None = None
    """hypergrad=partial only: the top that takes the virtual step, a comma list of module
    or parameter names (e.g. stage3,fc); None: the model's last stage and classifier"""
    famus_layers: int | None = None
    """hypergrad=famus only: how many layers carry the meta gradient each step (null: 4,
    the FaMUS paper's K)"""
    famus_sampling: Literal["uniform", "top"] | None = None
    """hypergrad=famus only: uniform (drawn each step from the run's seed and the step;
    the default) | top (the layers nearest the output)"""
    famus_rescale: bool | None = None
    """hypergrad=famus, uniform only: scale the kept layers' sum by L/K, an unbiased
    estimate (default false: the paper's plain sum, K/L of the exact one on average)"""
    normalize: Normalization = "sum"
    """sum | sum-detached | mean | none: how the weights of a batch are normalised"""
    virtual_step: VirtualStepKind = "sgd"
    meta_interval: int = 1
    """a weighting-net update every K-th step"""
    meta_interval_schedule: str | None = None
    """"K@E,K@E": a weighting-net update every K-th step from epoch E on (E epochs done);
    before the first E, meta_interval (e.g. "5@2,20@10")"""
    freeze_epoch: int | None = None
    """freeze the weighting net from this epoch on (no more meta steps)"""
    freeze_tolerance: float | None = None
    """freeze it from the first epoch at whose start its curve moved by less than this since
    the previous epoch's start (largest weight change on losses 0..10)"""
    net_hidden: int = 100
    net_depth: int = 1
    net_init: WeightInit = "default"
    """how a fresh weighting net starts: default (PyTorch's initialisation, the paper's) |
    flat (output layer zeroed: every weight 0.5 at the start, so the first virtual step is
    plain cross-entropy's, whatever the seed)"""
    net_optimizer: WeightOptimizer = "adam"
    net_lr: float = 1e-3
    net_momentum: float = 0.9
    net_nesterov: bool = True
    net_decay: float = 1e-4
    """the weighting net's weight decay"""
    net_from: str | None = None
    """start from the weight_net.pt of another run (a file or run directory)"""
    meta: bool = True
    """false keeps the weighting net of net_from frozen: no meta step, the meta set is
    never read (unless gate reads it), a step costs about a plain step"""
    inputs: list[str] = field(default_factory=lambda: list(LOSS_ONLY))
    """what the weighting net reads about each sample, a list of: loss | class | loss_ema |
    margin | confidence | agreement | loss_history | loss_rank (see
    mwnet.core.weight_inputs); default [loss], MW-Net's net"""
    dynamics_decay: float = DEFAULT_DECAY
    """decay of the per-sample averages among the inputs (loss_ema, margin, confidence,
    agreement): row <- d row + (1 - d) value at each visit"""
    history: int = DEFAULT_HISTORY
    """K, the visits the input loss_history spans: the sample's losses at its last K visits
    (about K epochs), oldest first, this one last, a first visit's loss repeated until
    there are K (MROLS's loss sequence, online; see mwnet.core.weight_inputs)"""
    gate: Gate = "none"
    """none | meta-sign: the real update keeps a sample's weight only where its own meta
    gradient (L2RW's) is favourable; the weighting net learns as without it"""

    def problem(self, prefix: str = "") -> str | None:
        """What is wrong with the inputs, their decay and the gate (keys named with
        ``prefix``), or None."""
        try:
            inputs = check_inputs(list(self.inputs), prefix)
            check_decay(self.dynamics_decay, prefix)
            check_history(self.history, prefix)
        except ValueError as err:
            return str(err)
        if self.gate not in GATES:
            return f"{prefix}gate={self.gate!r} is not valid; choose one of {', '.join(GATES)}"
        if self.gate != "none" and self.hypergrad not in HYPERGRAD_MODES:
            return (
                f"{prefix}gate={self.gate} needs each sample's exact meta gradient over every "
                f"parameter, but {prefix}hypergrad={self.hypergrad} restricts the virtual step "
                f"to part of the model; set {prefix}hypergrad=fast (or reverse), or "
                f"{prefix}gate=none"
            )
        if self.freeze_tolerance is not None and inputs != LOSS_ONLY:
            return (
                f"{prefix}freeze_tolerance compares the loss-to-weight curve between epochs, "
                f"and a net that reads {', '.join(inputs)} has none; use "
                f"{prefix}freeze_epoch instead"
            )
        return None

    def hypergradient(self, prefix: str = "") -> Hypergradient:
        """The configured hypergradient mode, checked (see :func:`hypergradient`)."""
        return hypergradient(
            self.hypergrad,
            low_memory=self.low_memory,
            head=self.head,
            partial=self.partial,
            famus_layers=self.famus_layers,
            famus_sampling=self.famus_sampling,
            famus_rescale=self.famus_rescale,
            prefix=prefix,
        )


@dataclass
class ClassAwareOptions:
    """``method.cmwnet.*``: CMW-Net's class-aware weighting net."""

    clusters: int = 3
    """class clusters by training-set size (k-means on the per-class counts), one weighting
    curve each; fewer if fewer distinct counts"""


@dataclass
class LabelCorrectionOptions:
    """``method.label_correction.*``: MW-Net-SL and CMW-Net-SL."""

    mixup: bool = False
    """train on mixup batches as the CMW-Net-SL authors do (two labels and two weights per
    mixed input); needs method.mwnet.normalize=mean"""


def make_weight_optimizer(
    params: list[nn.Parameter],
    kind: str = "adam",
    *,
    lr: float = 1e-3,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-4,
) -> torch.optim.Optimizer:
    """The weighting net's optimizer as the paper's settings name it.

    ``"adam"`` (flip noise: Adam 1e-3, wd 1e-4) ignores ``momentum`` and ``nesterov``;
    ``"sgd"`` (uniform noise, imbalance: SGD with Nesterov momentum) uses Nesterov only when
    there is momentum, since torch.optim.SGD rejects Nesterov without it.
    """
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=bool(nesterov) and momentum > 0,
            weight_decay=weight_decay,
        )
    raise ValueError(f"weight_optimizer must be one of {WEIGHT_OPTIMIZERS}, got {kind!r}")


class MetaWeightNet(Method):
    """Meta-Weight-Net (Shu et al., 2019) and CMW-Net (Shu et al., 2023): a weighting net
    learned on the meta batches.

    All the work is :class:`mwnet.MetaReweighter`'s; this adapter builds the weighting net
    on the model's device and dtype (MW-Net's :class:`~mwnet.WeightNet`, or with
    ``class_counts`` CMW-Net's :class:`~mwnet.ClassAwareWeightNet`; or the given
    ``weight_net``), draws a meta batch only on the steps that update the weighting net
    (``meta_interval``), and reports the step in the common form. ``StepOutput.weights``
    are the raw weights V(L_i) in (0, 1); the update uses them normalised as ``normalize``
    says. With a ``reducer`` the meta batches must be this rank's shards (see
    :class:`mwnet.MetaReweighter`).

    Args (beyond the reweighter's):
        class_counts: build a :class:`~mwnet.ClassAwareWeightNet` on these per-class
            counts with ``weight_clusters`` clusters (CMW-Net); None: a ``WeightNet``.
        weight_net: use this net (e.g. one learned in another run) instead of building one.
        weight_init: how a net built here starts: ``default`` (PyTorch's initialisation,
            the paper's) or ``flat`` (output layer zeroed: every weight 0.5 at the start,
            :func:`mwnet.start_flat`). Only for a net built here, not a given one.
        frozen: never update the weighting net: no meta batch is drawn, a step costs a
            plain step plus the tiny net. Needs ``weight_net``.
        loss_fn: the per-sample training loss ``(output, labels) -> (n,)`` (see
            :class:`mwnet.MetaReweighter`); None: cross-entropy. The meta loss is then its
            mean on the meta batch. Not with ``soft_labels``, which sets the loss itself.
        soft_labels: label correction (CMW-Net-SL): a callable giving a teacher's class
            probabilities for a training batch's inputs (e.g. an EMA teacher's
            ``soft_labels``). Each sample's objective is then
            v_i CE(f(x_i), y_i) + (1 − v_i) CE(f(x_i), p_i) with v_i its weight (exact, see
            :mod:`mwnet.core.objective`), and the meta loss the plain cross-entropy of the
            meta batch. The authors normalise with ``normalize="mean"``.
        soft_label_model: the module ``soft_labels`` runs (the teacher), whose buffers a
            step that fails puts back, as it does the model's.
        meta_interval_schedule: ``"K@E,K@E"``, a weighting-net update every K-th step
            from epoch E on (see :mod:`mwnet.methods.meta_schedule`); before the first E,
            ``meta_interval``. Applied by :meth:`begin_epoch`.
        freeze_epoch: freeze the weighting net from this epoch on (it learned for that
            many epochs): no meta batch, no meta step after it.
        freeze_tolerance: freeze it from the first epoch at whose start its curve moved by
            less than this since the start of the previous epoch (largest change of a
            weight on fixed losses, :data:`~mwnet.methods.meta_schedule.CURVE_LOSSES`).
        mixup: label correction on mixup batches, as the authors train: each step mixes
            the batch with a permutation of itself, λ ~ Beta(1, 1) folded to λ >= 1/2,
            and each mixed input gets a weight for each of its two labels (see
            :func:`mwnet.core.objective.label_correction_mixup_loss`); the meta batch is
            mixed the same way and its loss is the mixup cross-entropy. The soft labels
            come from the un-mixed inputs. Needs ``soft_labels`` and
            ``normalize="mean"``. Under data parallelism each rank mixes within its shard.
        inputs: what a net built here reads about each sample (see
            :mod:`mwnet.core.weight_inputs`): default ``("loss",)``, MW-Net's net, the
            same to the bit as before the option existed. ``class`` needs ``num_classes``;
            the averages (``loss_ema``, ``margin``, ``confidence``, ``agreement``) need
            ``num_samples`` and ``index`` in :meth:`step`, and so does ``loss_history``
            (MROLS's loss sequence, online: see :mod:`mwnet.core.weight_inputs` for how
            it departs from the authors' offline sequence and convolutional net). A given
            ``weight_net`` must read the same inputs (with the same ``dynamics_decay``
            and ``history``). With more than the
            loss there is no loss-to-weight curve: :meth:`weighting_function` is None and
            ``freeze_tolerance`` is refused.
        dynamics_decay: the decay of those averages.
        history: K, the visits ``loss_history`` spans (its columns).
        num_classes: the classes, for the one-hot ``class`` input (CMW-Net's net counts
            them from ``class_counts``).
        num_samples: the training set's size: rows of the table of averages.
        gate: ``"none"`` | ``"meta-sign"``: the real update keeps each sample's weight
            only where the sample's own meta gradient is negative (see
            :class:`mwnet.MetaReweighter`); the meta batch is then drawn every step.

    Departures from the authors' code, beyond the reweighter's: the inputs other than the
    loss and the gate are not in MW-Net or CMW-Net; with their defaults nothing changes.
    """

    name = "mwnet"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        *,
        hypergrad: HypergradMode = "fast",
        head: str | None = None,
        partial: str | Sequence[str] | None = None,
        famus: LayerSampling | None = None,
        normalize: Normalization = "sum",
        virtual_step: VirtualStepKind = "sgd",
        meta_interval: int = 1,
        meta_interval_schedule: str | Sequence[tuple[int, int]] | None = None,
        freeze_epoch: int | None = None,
        freeze_tolerance: float | None = None,
        low_memory: bool = False,
        compile: bool = False,
        weight_hidden: int = 100,
        weight_depth: int = 1,
        weight_optimizer: WeightOptimizer = "adam",
        weight_lr: float = 1e-3,
        weight_momentum: float = 0.9,
        weight_nesterov: bool = True,
        weight_decay: float = 1e-4,
        class_counts: torch.Tensor | None = None,
        weight_clusters: int = 3,
        weight_init: str = "default",
        weight_net: nn.Module | None = None,
        frozen: bool = False,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        soft_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
        soft_label_model: nn.Module | None = None,
        mixup: bool = False,
        inputs: Sequence[str] = LOSS_ONLY,
        dynamics_decay: float = DEFAULT_DECAY,
        history: int = DEFAULT_HISTORY,
        num_classes: int | None = None,
        num_samples: int | None = None,
        gate: Gate = "none",
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        inputs = check_inputs(inputs)
        if mixup and any(n not in ("loss", "class") for n in inputs):
            raise ValueError(
                "mixup gives each mixed input two terms, one per label, and the inputs "
                f"{', '.join(n for n in inputs if n not in ('loss', 'class'))} describe one "
                "sample each; use inputs=[loss] or [loss, class] with mixup"
            )
        if freeze_tolerance is not None and inputs != LOSS_ONLY:
            raise ValueError(
                "freeze_tolerance compares the loss-to-weight curve between epochs, and a net "
                f"that reads {', '.join(inputs)} has none; use freeze_epoch instead"
            )
            raise ValueError(
                "a frozen weighting net must come from somewhere: pass weight_net (e.g. "
                "mwnet.load_weight_net(path).net), or drop frozen"
            )
        if loss_fn is not None and soft_labels is not None:
            raise ValueError(
                "soft_labels sets the training loss (label correction), so loss_fn has nothing "
                "to do; drop one of them"
            )
        if mixup and (soft_labels is None or normalize != "mean"):
            raise ValueError(
                "mixup is label correction on mixed batches: it needs soft_labels (mwnet-sl, "
                f"cmwnet-sl) and normalize='mean', got normalize={normalize!r} and "
                f"soft_labels={'set' if soft_labels is not None else 'None'}"
            )
        schedule = UpdateSchedule(
            meta_interval,
            (
                parse_interval_schedule(meta_interval_schedule)
                if meta_interval_schedule is None or isinstance(meta_interval_schedule, str)
                else tuple(meta_interval_schedule)
            ),
            freeze_epoch,
            freeze_tolerance,
        )
        if frozen and schedule.active:
            raise ValueError(
                "a frozen weighting net is never updated, so a meta_interval_schedule, "
                "freeze_epoch or freeze_tolerance has nothing to do; drop them or frozen"
            )
        if weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}"
            )
        if weight_net is not None and weight_init != "default":
            raise ValueError(
                f"weight_init={weight_init!r} initialises a net built here, but weight_net "
                "was given (it starts as it is); drop one of them"
            )
        param = next(model.parameters())
        decay = check_decay(dynamics_decay) if reads_dynamics(inputs) else None
        length = check_history(history) if reads_history(inputs) else None
        if weight_net is not None:
            net = weight_net
            _check_given_net(net, inputs, decay, length)
        elif class_counts is not None:
            net = ClassAwareWeightNet(
                class_counts,
                clusters=weight_clusters,
                hidden=weight_hidden,
                inputs=inputs,
                dynamics_decay=decay,
                history=length,
            )
        else:
            net = WeightNet(
                hidden=weight_hidden,
                depth=weight_depth,
                inputs=inputs,
                num_classes=num_classes,
                dynamics_decay=decay,
                history=length,
            )
        if weight_init == "flat":
            start_flat(net)
        net = net.to(device=param.device, dtype=_float_dtype(model))
        net_optimizer = None
        if not frozen:
            net_optimizer = make_weight_optimizer(
                list(net.parameters()),
                weight_optimizer,
                lr=weight_lr,
                momentum=weight_momentum,
                nesterov=weight_nesterov,
                weight_decay=weight_decay,
            )
        self.reweighter = MetaReweighter(
            model,
            optimizer,
            net,
            net_optimizer,
            loss_fn=loss_fn if soft_labels is None else self._label_correction,
            meta_loss_fn=None if soft_labels is None else self._meta_loss,
            normalize=normalize,
            virtual_step=virtual_step,
            hypergrad=hypergrad,
            head=head,
            partial=partial,
            famus=famus,
            meta_interval=schedule.interval(0),
            low_memory=low_memory,
            compile=compile,
            frozen=frozen,
            checks=checks,
            reducer=reducer,
            num_samples=num_samples if per_sample(inputs) else None,
            gate=gate,
        )
        self.name = "cmwnet" if isinstance(net, ClassAwareWeightNet) else "mwnet"
        self.name += "-sl" if soft_labels is not None else ""
        self.soft_labels = soft_labels
        self.soft_label_model = soft_label_model
        self.mixup = mixup
        self._batch_soft_labels: torch.Tensor | None = None
        self._mix: _Mix | None = None
        self._meta_mix: _Mix | None = None
        self.normalize = normalize
        self.meta_batches = meta_batches
        self.updates = schedule
        super().__init__()

    @property
    def steps_done(self) -> int:
        """The reweighter's step count (it decides which steps update the weighting net)."""
        return self.reweighter.steps_done

    @steps_done.setter
    def steps_done(self, value: int) -> None:
        self.reweighter.steps_done = value

    def begin_epoch(self, epoch: int) -> None:
        """Apply the update schedule: this epoch's meta interval, and freezing."""
        updates, rw = self.updates, self.reweighter
        if not updates.active:
            return
        rw.meta_interval = updates.interval(epoch)
        curve = None
        if updates.freeze_tolerance is not None and updates.frozen_at is None:
            curve = self.weighting_function(CURVE_LOSSES)
        if updates.freezes and updates.freeze_now(epoch, curve):
            rw.freeze()

    def _label_correction(self, logits: torch.Tensor, y: torch.Tensor) -> WeightedLoss:
        assert self._batch_soft_labels is not None
        soft = self._batch_soft_labels.to(logits.dtype)
        if self._mix is None:
            return label_correction_loss(logits, y, soft)
        return label_correction_mixup_loss(logits, y, soft, self._mix.partner, self._mix.lam)

    def _meta_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        mix = self._meta_mix
        if mix is None:
            return loss
        return mix.lam * loss + (1 - mix.lam) * F.cross_entropy(logits, y[mix.partner])

    def step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepOutput:
        """One step; ``index`` (each sample's position in the training set, which the loop
        passes) is read only by a weighting net that reads per-sample averages."""
        teacher = self.soft_label_model
        if teacher is None or not self.checks:
            return self._step(x, y, index)
        with step_guard(teacher):  # the reweighter guards the model and the weighting net
            return self._step(x, y, index)

    @property
    def checks(self) -> bool:
        return self.reweighter.checks

    def _step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> StepOutput:
        rw = self.reweighter
        y = integer_labels(y)
        if self.soft_labels is not None:
            if rw.checks:
                check_batch(x, y, "training")
                check_class_labels(y, "training")
            with torch.no_grad():
                self._batch_soft_labels = self.soft_labels(x)
            if rw.checks:  # the label-correction loss indexes the classes with the labels
                check_labels(y, self._batch_soft_labels.shape[-1], "training")
        x_meta = y_meta = None  # drawn only on the steps that read it
        if rw.needs_meta_batch():
            x_meta, y_meta = next_meta_batch(self.meta_batches)
            y_meta = integer_labels(y_meta)
            if rw.checks and self._batch_soft_labels is not None:
                check_class_labels(y_meta, "meta")
                check_labels(y_meta, self._batch_soft_labels.shape[-1], "meta")
        if self.mixup:
            self._mix = _Mix.draw(len(y), x.device)
            x = self._mix.apply(x)
            if x_meta is not None:
                self._meta_mix = _Mix.draw(len(y_meta), x_meta.device)
                x_meta = self._meta_mix.apply(x_meta)
        result = rw.step(x, y, x_meta, y_meta, index)
        n = len(y)  # with mixup two terms per sample: report each sample's given-label one
        return StepOutput(
            loss=result.loss,
            losses=result.losses[:n],
            weights=result.weights[:n],
            meta_loss=result.meta_loss,
        )

    def weighting_function(self, losses: torch.Tensor) -> torch.Tensor | None:
        """The current weighting net's V(L) in (0, 1) for losses of shape (n,); for a
        class-aware net, one curve per class cluster, shape (n, K). None for a net that
        reads more than the loss: its weight is no function of the loss alone."""
        net = self.reweighter.weight_net
        if net_inputs(net) != LOSS_ONLY:
            return None
        param = next(net.parameters())
        losses = losses.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            if isinstance(net, ClassAwareWeightNet):
                return net.curves(losses)
            return self.reweighter.weights(losses)

    def weighting_net(self) -> tuple[nn.Module, str]:
        return self.reweighter.weight_net, self.normalize

    def state_dict(self) -> dict[str, Any]:
        state = self.reweighter.state_dict()
        if self.updates.active:
            state["updates"] = self.updates.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reweighter.load_state_dict(state)
        if self.updates.active:
            self.updates.load_state_dict(state.get("updates", {}))
            if self.updates.frozen_at is not None:
                self.reweighter.freeze()


def _check_given_net(
    net: nn.Module, inputs: tuple[str, ...], decay: float | None, history: int | None
) -> None:
    """A net learned elsewhere must read what this run feeds it."""
    given = net_inputs(net)
    if given != inputs:
        raise ValueError(
            f"the given weighting net reads {', '.join(given)}, but inputs="
            f"{', '.join(inputs)}; pass inputs={list(given)} to use it"
        )
    given_decay = getattr(net, "dynamics_decay", None)
    if decay is not None and given_decay is not None and given_decay != decay:
        raise ValueError(
            f"the given weighting net learned on averages with dynamics_decay={given_decay}, "
            f"but dynamics_decay={decay}; pass dynamics_decay={given_decay} to use it"
        )
    given_history = getattr(net, "history", None)
    if history is not None and given_history is not None and given_history != history:
        raise ValueError(
            f"the given weighting net reads loss sequences of {given_history} visits, but "
            f"history={history}; pass history={given_history} to use it"
        )


@dataclass(frozen=True)
class _Mix:
    """One mixup draw: λ ~ Beta(1, 1) folded to >= 1/2 and a partner for each sample."""

    lam: float
    partner: torch.Tensor

    @staticmethod
    def draw(n: int, device: torch.device) -> _Mix:
        lam = float(torch.rand(()))  # Beta(1, 1) is uniform
        return _Mix(max(lam, 1 - lam), torch.randperm(n).to(device))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * x + (1 - self.lam) * x[self.partner]


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating-point dtype, for a weighting net that computes alongside it."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
