"""One Meta-Weight-Net iteration for any ``nn.Module`` and optimizer."""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

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
from mwnet.core.compiled import (
    CompiledLossesJvp,
    compiled_functional,
    compiled_jvp_usable,
    compiled_module,
    eager_functional,
)
from mwnet.core.data_parallel import global_coefficients, global_mean, weighted_backward
from mwnet.core.famus import LayerSampling, kept_parameters, layer_groups
from mwnet.core.head import HeadCall, LinearHead, head_problem
from mwnet.core.hypergrad import (
    FAMUS_MODE,
    HEAD_MODE,
    HYPERGRAD_MODES,
    HYPERGRADIENTS,
    PARTIAL_MODE,
    REWEIGHTER_MODES,
    HypergradMode,
    MetaProblem,
)
from mwnet.core.objective import WeightedLoss, as_weighted_loss
from mwnet.core.parameters import virtual_parameters
from mwnet.core.partial import Recording, TopPart
from mwnet.core.reducer import GradientReducer
from mwnet.core.sample_meta_gradient import sample_meta_gradient
from mwnet.core.snapshot import ForwardSnapshot
from mwnet.core.tangents import ForwardRecord, TangentReplay
from mwnet.core.virtual_step import VirtualStepKind, affine_step, check_virtual_step
from mwnet.core.weight_inputs import DEFAULT_DECAY, DEFAULT_HISTORY, WeightInputs
from mwnet.core.weight_net import WeightNet, net_inputs, takes_labels

Normalization = Literal["sum", "sum-detached", "mean", "none"]
NORMALIZATIONS: tuple[str, ...] = ("sum", "sum-detached", "mean", "none")
Gate = Literal["none", "meta-sign"]
GATES: tuple[str, ...] = typing.get_args(Gate)
"""``none``: the weighting net's weights as they are; ``meta-sign``: each multiplied by
1[the sample's own meta gradient is favourable] (see :class:`MetaReweighter`)."""
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
TrainingLossFn = Callable[[Any, torch.Tensor], "torch.Tensor | WeightedLoss"]


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default training loss: cross-entropy, one value per sample."""
    return F.cross_entropy(logits, labels, reduction="none")


def normalize_weights(weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn raw weights w_i into the coefficients c_i of the training loss Σ_i c_i L_i.

    ``"sum"`` (paper appendix): c = w / Σw, left at 0 if Σw == 0 (checked without a host
    sync). ``"sum-detached"`` (the CMW-Net authors' class-imbalance script): the same
    values, but the hypergradient treats Σw as a constant, so raising one weight does not
    lower the others. ``"mean"`` (the authors' "stable" script): c = w / n. ``"none"``:
    c = w, so the step size grows with the batch size.
    """
    if mode in ("sum", "sum-detached"):
        total = weights.sum()
        total = total.detach() if mode == "sum-detached" else total
        return weights / torch.where(total == 0, torch.ones_like(total), total)
    if mode == "mean":
        return weights / weights.numel()
    if mode == "none":
        return weights
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`MetaReweighter.step` did, detached, for logging."""

    losses: torch.Tensor
    """Per-sample training losses L_i(θ) before the update, shape (n,): what the weighting
    net saw as its ``loss`` input (a :class:`WeightedLoss`'s ``weigh_by``)."""
    weights: torch.Tensor
    """Raw weights the real update used: V(L_i) in (0, 1) from the updated weighting net,
    times the gate (0 or 1) with ``gate="meta-sign"``."""
    coefficients: torch.Tensor
    """Normalised weights c_i actually applied: the update minimises Σ_i c_i L_i."""
    loss: torch.Tensor
    """The weighted training loss Σ_i c_i L_i (scalar; for a :class:`WeightedLoss`,
    Σ_i c_i A_i + mean_i B_i)."""
    meta_loss: torch.Tensor | None
    """Meta loss after the virtual step, L_meta(θ̂); None when the weighting net was not
    updated this step (see ``meta_interval``)."""
    step: int
    """Index of this step, counted from 0."""
    gate: torch.Tensor | None = None
    """With ``gate="meta-sign"``: which samples kept their weight (bool, shape (n,)):
    those whose own meta gradient g_i is negative. None without a gate."""


class MetaReweighter:
    """Trains ``model`` on a weighted loss whose weights a :class:`WeightNet` learns.

    Each :meth:`step` is one iteration of Meta-Weight-Net (Shu et al., 2019), as the
    authors implement it: per-sample losses L_i(θ); weights w_i = V(L_i; Θ); a virtual
    step θ̂(Θ) on Σ c_i L_i; the meta loss of θ̂ on a clean batch; a step of the weighting
    net on ∂L_meta/∂Θ; finally the real optimizer step on Σ c_i L_i with the *updated*
    weighting net. The model is used as it is, through ``torch.func.functional_call``.

    State guarantees: the virtual and meta passes never change the model's parameters,
    buffers (BatchNorm running statistics, counters) or the optimizer's state; running
    statistics move once per step, in the real forward. Every forward runs in the
    module's own mode (the paper trains in ``train()`` mode: BatchNorm on batch statistics).

    Args:
        model: any module mapping a batch of inputs to what ``loss_fn`` takes.
        optimizer: the model's optimizer. Only trainable parameters it holds take part
            in the virtual step, each at its param group's current learning rate.
        weight_net: the weighting network; default :class:`WeightNet` (1-100-1). It is
            called as ``weight_net(losses)`` with losses of shape (n, 1), or, if it has a
            true ``takes_labels`` attribute (:class:`ClassAwareWeightNet`), as
            ``weight_net(losses, labels)`` with the batch's observed labels, shape (n,).
            Either way it returns one weight per sample. Its input is detached from the
            model's graph, as in the authors' noisy-label scripts. A net with an ``inputs``
            attribute other than ``("loss",)`` (see :mod:`mwnet.core.weight_inputs`) is
            called with the ``(n, width)`` matrix of those inputs instead of the losses,
            all detached: the hypergradient is exact given them, in every mode. Inputs
            kept per training sample (averages, the loss sequence) need ``num_samples``
            here and ``index`` in :meth:`step`; their table is part of :meth:`state_dict`.
        weight_optimizer: optimizer of ``weight_net``; default Adam(lr=1e-3,
            weight_decay=1e-4), the authors' setting for flip noise.
        loss_fn: per-sample training loss ``(output, labels) -> (n,)``; default
            cross-entropy. It may instead return a :class:`WeightedLoss`, an objective
            Σ_i c_i A_i + mean_i B_i that is affine in the weights (label correction:
            :func:`mwnet.core.objective.label_correction_loss`); the hypergradient stays
            exact for it, in every mode.
        meta_loss_fn: scalar loss on the meta batch; default the mean of ``loss_fn`` (of a
            :class:`WeightedLoss`'s ``losses``: the loss the weighting net sees).
        normalize: ``"sum"`` (paper) | ``"sum-detached"`` (CMW-Net's imbalance script) |
            ``"mean"`` (authors' stable script) | ``"none"``, see :func:`normalize_weights`.
        virtual_step: ``"sgd"`` (paper: plain SGD at the current lr) | ``"optimizer"``
            (one torch.optim.SGD step: momentum, Nesterov, weight decay).
        hypergrad: ``"fast"`` (forward-mode JVP; default) | ``"reverse"`` (second-order
            backward, the authors' method) | ``"head"`` | ``"partial"``. ``fast`` and
            ``reverse`` give the same, exact gradient. ``head`` is an approximation at
            about the cost of a plain step plus one no-grad forward of the meta batch: only
            the final ``nn.Linear`` takes the virtual step, on the features the real
            forward already computed
            (the body is frozen for the meta step, not for the real update, which trains
            every parameter as usual); its gradient is exact for that restricted problem.
            See :mod:`mwnet.core.head`. ``partial``: a top part of the model (``partial=``)
            takes the virtual step, the rest is frozen for the meta step and its
            activations are reused: the meta forward, meta backward and JVP run through
            the top only; exact for that restricted problem (:mod:`mwnet.core.partial`).
            ``famus``: FaMUS's layer-wise approximation (Xu et al., 2021): the whole
            virtual step, but only a few layers (``famus=``) carry the meta gradient back
            to the weights, each step's layers drawn from the run's seed and the step;
            the meta backward and the JVP stop at the lowest kept layer
            (:mod:`mwnet.core.famus`).
        head: ``hypergrad="head"`` only: the module name (as in ``model.named_modules()``)
            of the final ``nn.Linear``, whose output is then taken as what ``loss_fn``
            receives. Default: detected at the first meta update as the last
            ``nn.Linear`` that ran, which must produce the model's output itself (else a
            ValueError asks for this name). The head must be trainable and in
            ``optimizer``. Hooks capture its input only during the reweighter's own
            forwards and are removed after each.
        partial: ``hypergrad="partial"`` only: the top that takes the virtual step, as
            module or parameter names (a comma list like ``"stage3,fc"`` or a sequence; a
            name covers every parameter under it). Default: the last stage of the body and
            the classifier, read from the module tree (see
            :func:`mwnet.core.partial.default_top`). The top must be trainable and in
            ``optimizer``.
        famus: ``hypergrad="famus"`` only: which layers are kept, how many and how drawn
            (:class:`mwnet.core.famus.LayerSampling`; default four layers drawn uniformly,
            seed 0).
        meta_interval: update the weighting net every k-th step only; steps in between
            use the current weighting net and cost about a plain step.
        low_memory: ``hypergrad="fast"`` only. By default the real update reuses the
            training forward's graph, which therefore stays alive through the meta forward
            and backward: two graphs of activations at once, about twice a plain step's
            peak memory. With ``low_memory=True`` a meta-update step frees that graph with
            the virtual step's gradient and runs the forward again for the real update,
            with the same RNG state (same dropout masks) and buffers, so the result is the
            same: peak memory near a plain step's, for one extra forward per meta update.
        compile: ``hypergrad="fast"`` only: run the step's passes through
            ``torch.compile``: the training forward and its backwards, the meta forward and
            its backward, and the forward-mode JVP (eager under autocast, where tracing it
            fails: see :mod:`mwnet.core.compiled`). Random ops draw what eager mode draws,
            so the step is the eager one up to float rounding. The first steps pay the
            compilation. See :mod:`mwnet.core.compiled` and docs/PERFORMANCE.md.
        frozen: use ``weight_net`` as it is, never updating it: no virtual step, no meta
            pass, and no meta batch is needed (pass ``x_meta=None``). For a weighting net
            learned in another run; a step then costs a plain step plus the tiny net.
        checks: validate batches and labels and stop on NaN/Inf (one or two host syncs
            per step on a GPU).
        num_samples: the training set's size, for a weighting net that reads averages
            kept per training sample (``loss_ema``, ``margin``, ``confidence``,
            ``agreement``) or their loss sequence (``loss_history``); None otherwise.
        gate: ``"none"`` (default) | ``"meta-sign"``: multiply each sample's weight in the
            real update by 1[g_i < 0], with g_i = ∂L_meta(θ − α∇_θ Σ_j ε_j L_j)/∂ε_i at
            ε = 0 = −α⟨∇_θ L_meta(θ), ∇_θ L_i(θ)⟩ the sample's own meta gradient, L2RW's
            signal (Ren et al., 2018; computed as :class:`mwnet.methods.L2RW` computes it,
            :func:`mwnet.core.sample_meta_gradient.sample_meta_gradient`, with α each
            parameter's current learning rate and L_i the part of the objective the
            weights multiply), on the step's meta batch. The weighting net learns as
            without the gate (its virtual step uses its own weights, ungated); only the
            real update is gated. Every step then needs a meta batch
            (:meth:`needs_meta_batch`), and costs one more meta forward and backward at θ
            and one more JVP (``fast``) or second-order pass (``reverse``); ``head`` and
            ``partial`` are refused (the signal is over every parameter, exactly).
        reducer: data parallelism over the ranks of a ``torch.distributed`` process group
            (see :mod:`mwnet.core.data_parallel`). Every rank then passes its own contiguous
            shard of the training batch and an equal-sized shard of the meta batch, and all
            ranks end each step with the same model and weighting net, equal to one
            process's step on the whole batches (BatchNorm aside: it normalises each shard
            by its own statistics unless the model uses ``nn.SyncBatchNorm``). Losses,
            weights and coefficients in :class:`StepResult` are this rank's; ``loss`` and
            ``meta_loss`` are global. None (the default): one process, no communication.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        weight_net: nn.Module | None = None,
        weight_optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: TrainingLossFn | None = None,
        meta_loss_fn: LossFn | None = None,
        normalize: Normalization = "sum",
        virtual_step: VirtualStepKind = "sgd",
        hypergrad: HypergradMode = "fast",
        head: str | None = None,
        partial: str | Sequence[str] | None = None,
        famus: LayerSampling | None = None,
        meta_interval: int = 1,
        low_memory: bool = False,
        compile: bool = False,
        frozen: bool = False,
        checks: bool = True,
        reducer: GradientReducer | None = None,
        num_samples: int | None = None,
        gate: Gate = "none",
    ) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if hypergrad not in REWEIGHTER_MODES:
            raise ValueError(f"hypergrad must be one of {REWEIGHTER_MODES}, got {hypergrad!r}")
        if head is not None and hypergrad != HEAD_MODE:
            raise ValueError(
                f"head={head!r} is used by hypergrad='head' only, but hypergrad={hypergrad!r}; "
                "drop head= or set hypergrad='head'"
            )
        if partial is not None and hypergrad != PARTIAL_MODE:
            raise ValueError(
                f"partial={partial!r} is used by hypergrad='partial' only, but hypergrad="
                f"{hypergrad!r}; drop partial= or set hypergrad='partial'"
            )
        if famus is not None and hypergrad != FAMUS_MODE:
            raise ValueError(
                f"famus={famus!r} is used by hypergrad='famus' only, but hypergrad="
                f"{hypergrad!r}; drop famus= or set hypergrad='famus'"
            )
        if famus is not None and not isinstance(famus, LayerSampling):
            raise TypeError(
                f"famus must be a mwnet.core.famus.LayerSampling, got {type(famus).__name__}"
            )
        check_virtual_step(virtual_step, optimizer)
        check_gate(gate, hypergrad)
        if not isinstance(meta_interval, int) or meta_interval < 1:
            raise ValueError(f"meta_interval must be an integer >= 1, got {meta_interval!r}")
        if low_memory and hypergrad != "fast":
            raise ValueError(
                f"low_memory=True needs hypergrad='fast', got {hypergrad!r}: 'reverse' "
                "differentiates through the training graph, so it cannot be freed early, "
                "'head' keeps only one graph already, and 'partial' keeps the bottom's "
                "activations; use hypergrad='fast' or low_memory=False"
            )
        if compile and hypergrad != "fast":
            raise ValueError(
                f"compile=True needs hypergrad='fast', got {hypergrad!r}: compiled graphs "
                "support neither the double backward of 'reverse' nor the forward hooks "
                "'head' and 'partial' record activations with; use hypergrad='fast' or "
                "compile=False"
            )
        self.model = model
        self._forward = compiled_module(model) if compile else model
        self._functional = compiled_functional(model) if compile else eager_functional(model)
        self.optimizer = optimizer
        self.weight_net = weight_net if weight_net is not None else WeightNet()
        self.frozen = frozen
        self._weight_dtype = next(self.weight_net.parameters()).dtype
        self.inputs = WeightInputs(
            net_inputs(self.weight_net),
            num_classes=getattr(self.weight_net, "num_classes", None),
            num_samples=num_samples,
            decay=_decay(self.weight_net),
            history=_history(self.weight_net),
            dtype=self._weight_dtype,
            device=next(self.weight_net.parameters()).device,
            reducer=reducer,
            checks=checks,
        )
        """What the weighting net reads about each sample, and the per-sample averages."""
        self.gate = gate
        self._weight_params = [p for p in self.weight_net.parameters() if p.requires_grad]
        if frozen:
            if weight_optimizer is not None:
                raise ValueError("frozen=True never updates weight_net; drop weight_optimizer")
            self.weight_optimizer = None
        elif not self._weight_params:
            raise ValueError(
                "weight_net has no trainable parameters; pass frozen=True to use it as it is"
            )
        else:
            self.weight_optimizer = weight_optimizer or torch.optim.Adam(
                self._weight_params, lr=1e-3, weight_decay=1e-4
            )
        self._default_loss = loss_fn is None
        self.loss_fn: TrainingLossFn = loss_fn or per_sample_cross_entropy
        self.meta_loss_fn: LossFn = meta_loss_fn or self._default_meta_loss
        self._losses_jvp = CompiledLossesJvp(model, self._weighted_part) if compile else None
        self.normalize = normalize
        self.virtual_step = virtual_step
        self.hypergrad = hypergrad
        self.meta_interval = meta_interval
        self.low_memory = low_memory
        self.compile = compile
        self.checks = checks
        self.reducer = reducer
        self.steps_done = 0
        self._names, self._params, self._group_index = virtual_parameters(model, optimizer)
        self._head = (
            LinearHead(model, self._names, self._params, head) if hypergrad == HEAD_MODE else None
        )
        top = None
        if hypergrad == PARTIAL_MODE:
            top = TopPart(model, self._names, self._params, partial)
        # a top that holds every parameter is fast's problem, and takes fast's passes
        self._top = None if top is None or top.is_everything else top
        self._famus = (famus or LayerSampling()) if hypergrad == FAMUS_MODE else None
        self._layers = layer_groups(self._names)
        self._jvp_mode = hypergrad in ("fast", PARTIAL_MODE, FAMUS_MODE) and self._top is None

    def _groups(self) -> list[dict]:
        """Each virtual parameter's current param group (with the lr a schedule set)."""
        groups = self.optimizer.param_groups
        return [groups[i] for i in self._group_index]

    def weights(self, losses: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Raw weights V(L) in (0, 1) for per-sample losses of shape (n,), or, for a net
        with more inputs, for the ``(n, width)`` matrix of its inputs.

        ``labels`` (the samples' observed labels, shape (n,)) are required by a weighting
        net that takes them and ignored otherwise. The weighting net always runs in its own
        precision, outside autocast: it is tiny, and its output must match the dtype of the
        losses it multiplies.
        """
        column = losses.reshape(-1, 1) if losses.dim() < 2 else losses
        column = column.to(self._weight_dtype)
        with torch.autocast(losses.device.type, enabled=False):
            if takes_labels(self.weight_net):
                if labels is None:
                    raise ValueError(
                        f"{type(self.weight_net).__name__} takes each sample's label; pass "
                        "labels= as well as the losses"
                    )
                out = self.weight_net(column, labels)
            else:
                out = self.weight_net(column)
        if out.numel() != column.shape[0]:
            raise ValueError(
                f"weight_net must return one weight per loss: got {tuple(out.shape)} for "
                f"{column.shape[0]} losses"
            )
        return out.reshape(-1)

    def _per_sample(self, output: Any, y: torch.Tensor, which: str) -> WeightedLoss:
        if self.checks and self._default_loss:
            check_logits(output, y.shape[0], which)
            check_labels(y, output.shape[-1], which)
        return as_weighted_loss(self.loss_fn(output, y), y.shape[0], which)

    def _weighted_part(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        """A_i of the objective: what the coefficients multiply (the JVP's per-sample losses)."""
        out = self.loss_fn(output, y)
        return out.weighted if isinstance(out, WeightedLoss) else out

    def _default_meta_loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        out = self.loss_fn(output, y)
        return (out.losses if isinstance(out, WeightedLoss) else out).mean()

    def _unweighted_mean(self, terms: WeightedLoss) -> torch.Tensor | None:
        """mean_i B_i over the global batch (this rank's share under data parallelism)."""
        if terms.unweighted is None:
            return None
        if self.reducer is None:
            return terms.unweighted.mean()
        return global_mean(terms.unweighted, self.reducer)

    def _meta_loss(self, out: Any, y_meta: torch.Tensor) -> torch.Tensor:
        if self.checks and self._default_loss:
            check_logits(out, y_meta.shape[0], "meta")
            check_labels(y_meta, out.shape[-1], "meta")
        meta_loss = self.meta_loss_fn(out, y_meta)
        if meta_loss.dim() != 0:
            raise ValueError(
                f"meta_loss_fn must return a scalar, got shape {tuple(meta_loss.shape)}"
            )
        return meta_loss

    def _watching(
        self, meta_update: bool, device: torch.device
    ) -> AbstractContextManager[HeadCall | Recording | ForwardRecord | None]:
        """Around the training forward: records the head's input, the bottom's activations,
        or (``fast``) the outputs its JVP reuses (:mod:`mwnet.core.tangents`), when the
        mode will need them (a meta update), and installs nothing otherwise. Not with
        ``low_memory``, whose point is to keep no activation of that forward, nor with
        ``compile``, whose JVP is one compiled function."""
        if not meta_update:
            return nullcontext()
        if self._head is not None:
            return self._head.watching()
        if self._top is not None:
            return self._top.recording(device, record_ops=True)
        if self._jvp_mode and not self.low_memory and not self.compile:
            return ForwardRecord()
        return nullcontext()

    def _problem(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        output: Any,
        terms: WeightedLoss,
        snapshot: ForwardSnapshot,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        call: HeadCall | Recording | None,
        features: torch.Tensor,
        keep_graph: bool = True,
    ) -> MetaProblem:
        weights = self.weights(features, _labels(terms, y))
        coefficients = self._coefficients(weights).to(terms.weighted.dtype)
        if self._head is not None:
            assert isinstance(call, HeadCall)
            return self._head_problem(output, y, coefficients, snapshot, x_meta, y_meta, call)
        if self._top is not None:
            assert isinstance(call, Recording)
            return self._partial_problem(
                x, y, terms, coefficients, snapshot, x_meta, y_meta, call, keep_graph
            )

        def meta_loss_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            out = self._functional({**theta, **snapshot.buffer_copies()}, x_meta)
            return self._meta_loss(out, y_meta)

        jvp = self._losses_jvp
        kept, scale = None, 1.0
        if self._famus is not None:
            kept, scale = kept_parameters(self._famus, self._layers, self.steps_done)
        return MetaProblem(
            names=self._names,
            params=self._params,
            losses=terms.weighted,
            coefficients=coefficients,
            unweighted_mean=self._unweighted_mean(terms),
            step=affine_step(self.virtual_step, self._params, self._groups(), self.optimizer),
            meta_loss_at=meta_loss_at,
            losses_at=self._replay(x, y, snapshot, call),
            weight_params=self._weight_params,
            reducer=self.reducer,
            losses_jvp=None
            if jvp is None or not compiled_jvp_usable()
            else jvp.replaying(self._names, snapshot, x, y),
            meta_indices=kept,
            meta_scale=scale,
            keep_graph=keep_graph,
        )

    def _replay(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        snapshot: ForwardSnapshot,
        call: HeadCall | Recording | ForwardRecord | None,
    ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """The training forward again with the given parameters (dual tensors in forward
        mode): same dropout masks, buffers on copies, the recorded outputs reused when the
        forward was recorded (:mod:`mwnet.core.tangents`); returns the weighted part A_i."""

        def losses_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            with snapshot.replaying_rng():
                if isinstance(call, ForwardRecord):
                    with TangentReplay(call) as replay:
                        out = functional_call(
                            self.model, {**theta, **snapshot.buffer_copies()}, (x,)
                        )
                    replay.check_complete()
                else:
                    out = functional_call(self.model, {**theta, **snapshot.buffer_copies()}, (x,))
            return self._weighted_part(out, y)

        return losses_at

    def _sample_scores(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        terms: WeightedLoss,
        snapshot: ForwardSnapshot,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        call: HeadCall | Recording | ForwardRecord | None,
    ) -> torch.Tensor:
        """The gate's signal: each term's g_i = −α⟨∇_θ L_meta(θ), ∇_θ A_i(θ)⟩, this rank's."""

        def meta_loss_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            out = self._functional({**theta, **snapshot.buffer_copies()}, x_meta)
            return self._meta_loss(out, y_meta)

        lrs = [float(g["lr"]) for g in self._groups()]
        scores, _ = sample_meta_gradient(
            self._names,
            self._params,
            lrs,
            terms.weighted,
            meta_loss_at,
            self._replay(x, y, snapshot, call),
            "reverse" if self.hypergrad == "reverse" else "fast",
            self.reducer,
            who="gate='meta-sign'",
        )
        return scores

    def _coefficients(self, weights: torch.Tensor) -> torch.Tensor:
        """c_i from raw weights, normalised over the global batch under data parallelism."""
        if self.reducer is None:
            return normalize_weights(weights, self.normalize)
        return global_coefficients(weights, self.normalize, self.reducer)

    def _head_problem(
        self,
        output: Any,
        y: torch.Tensor,
        coefficients: torch.Tensor,
        snapshot: ForwardSnapshot,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        call: HeadCall,
    ) -> MetaProblem:
        """The meta problem of ``hypergrad="head"``: the head's parameters only, on the
        features of the real forward and of one no-grad forward of the meta batch."""
        head = self._head
        assert head is not None
        features = head.features(call, output)  # detects the head on the first meta update
        meta_features = head.meta_features(snapshot, x_meta)
        groups = self._groups()
        params = [self._params[i] for i in head.indices]

        def losses_fn(logits: torch.Tensor) -> WeightedLoss:
            return as_weighted_loss(self.loss_fn(logits, y), y.shape[0], "training")

        return head_problem(
            head,
            names=[self._names[i] for i in head.indices],
            params=params,
            features=features,
            y=y,
            meta_features=meta_features,
            coefficients=coefficients,
            step=affine_step(
                self.virtual_step, params, [groups[i] for i in head.indices], self.optimizer
            ),
            losses_fn=losses_fn,
            unweighted_mean=self._unweighted_mean,
            meta_loss_fn=lambda logits: self._meta_loss(logits, y_meta),
            weight_params=self._weight_params,
            reducer=self.reducer,
        )

    def _partial_problem(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        terms: WeightedLoss,
        coefficients: torch.Tensor,
        snapshot: ForwardSnapshot,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        recording: Recording,
        keep_graph: bool,
    ) -> MetaProblem:
        """The meta problem of ``hypergrad="partial"``: the top's parameters only, with the
        bottom's recorded activations standing in for the bottom in every extra pass."""
        top = self._top
        assert top is not None
        names = top.names
        params = [self._params[i] for i in top.indices]
        groups = self._groups()

        def meta_loss_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            meta = top.meta_recording(snapshot, x_meta, x_meta.device)
            with top.replaying(meta, from_start=True):
                out = functional_call(self.model, {**theta, **snapshot.buffer_copies()}, (x_meta,))
            return self._meta_loss(out, y_meta)

        def losses_at(theta: dict[str, torch.Tensor]) -> torch.Tensor:
            assert recording.ops is not None
            with snapshot.replaying_rng(), top.replaying(recording):
                with TangentReplay(recording.ops) as replay:
                    out = functional_call(self.model, {**theta, **snapshot.buffer_copies()}, (x,))
                replay.check_complete()
            return self._weighted_part(out, y)

        return MetaProblem(
            names=names,
            params=params,
            losses=terms.weighted,
            coefficients=coefficients,
            unweighted_mean=self._unweighted_mean(terms),
            step=affine_step(
                self.virtual_step, params, [groups[i] for i in top.indices], self.optimizer
            ),
            meta_loss_at=meta_loss_at,
            losses_at=losses_at,
            weight_params=self._weight_params,
            reducer=self.reducer,
            keep_graph=keep_graph,
        )

    def meta_gradient(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_meta: torch.Tensor,
        y_meta: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """∂L_meta/∂Θ and the meta loss for one iteration, changing no state at all.

        The gradients follow the order of the weighting net's trainable parameters. Useful
        to inspect or test the hypergradient; :meth:`step` computes the same internally
        (``index`` as there: the per-sample averages are read and this visit's value
        counted, but the table is not written).
        """
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        self._check_batches(x, y, x_meta, y_meta)
        snapshot = ForwardSnapshot.capture(self.model, x.device)
        with self._watching(True, x.device) as call, inputs_named(x, "training"):
            output = functional_call(self.model, snapshot.buffer_copies(), (x,))
        terms = self._per_sample(output, y, "training")
        features, _ = self.inputs.batch(output, terms.losses, _labels(terms, y), index)
        problem = self._problem(
            x, y, output, terms, snapshot, x_meta, y_meta, call, features, False
        )
        return HYPERGRADIENTS[self.hypergrad](problem)

    def _check_batches(self, x, y, x_meta, y_meta) -> None:
        if self.checks:
            self._check_batch(x, y, "training")
            self._check_batch(x_meta, y_meta, "meta")
            check_same_samples(x, x_meta)

    def _check_batch(self, x: torch.Tensor, y: torch.Tensor, which: str) -> None:
        check_batch(x, y, which)
        if self._default_loss:  # cross-entropy on class indices; a loss_fn may take others
            check_class_labels(y, which)

    def freeze(self) -> None:
        """Stop updating the weighting net: from now on every step uses it as it is, with
        no meta batch and no meta step, as with ``frozen=True`` (for a net whose curve has
        settled). ``meta_interval`` may likewise be changed between steps."""
        self.frozen = True

    def is_meta_step(self) -> bool:
        """Whether the next :meth:`step` updates the weighting net (and needs a meta batch)."""
        return not self.frozen and self.steps_done % self.meta_interval == 0

    def needs_meta_batch(self) -> bool:
        """Whether the next :meth:`step` reads a meta batch: to update the weighting net,
        or, with a gate, on every step."""
        return self.gate != "none" or self.is_meta_step()

    def famus_parameters(self, step: int | None = None) -> list[str]:
        """``hypergrad="famus"``: names of the parameters whose layers carry the meta
        gradient at ``step`` (default: the next step), for logging and inspection."""
        if self._famus is None:
            raise ValueError(f"famus_parameters needs hypergrad='famus', not {self.hypergrad!r}")
        at = self.steps_done if step is None else step
        kept, _ = kept_parameters(self._famus, self._layers, at)
        return [self._names[i] for i in kept]

    def step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_meta: torch.Tensor | None = None,
        y_meta: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> StepResult:
        """One iteration: virtual step, weighting-net update, real update.

        The meta batch may be None on steps that do not read it (see
        :meth:`needs_meta_batch`). ``index``: each sample's position in the training set,
        needed by a weighting net that reads per-sample averages (and ignored otherwise);
        under data parallelism, this rank's shard of them. Raises FloatingPointError
        (naming the step) instead of applying an update computed from a non-finite loss or
        gradient; a step that raises leaves the model's buffers, the weighting net and its
        optimizer as they were, and writes no per-sample average.

        With the default loss, ``y`` and ``y_meta`` are class indices of shape (n,), of any
        integer dtype (converted to int64), and the model returns logits of shape
        (n, classes); with ``checks``, anything else (float or bool labels, a model that
        returns a tuple, inputs the model cannot take) is a TypeError or ValueError naming
        the argument, what it held and the fix.
        """
        learning = [self.weight_net] if self.is_meta_step() else []
        optimizers = [self.weight_optimizer] if learning else []
        y, y_meta = integer_labels(y), integer_labels(y_meta)
        with step_guard(self.model, modules=learning, optimizers=optimizers, enabled=self.checks):
            return self._step(x, y, x_meta, y_meta, index)

    def _step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_meta: torch.Tensor | None,
        y_meta: torch.Tensor | None,
        index: torch.Tensor | None,
    ) -> StepResult:
        meta_update = self.is_meta_step()
        gated = self.gate != "none"
        recompute = meta_update and self.low_memory
        if (meta_update or gated) and (x_meta is None or y_meta is None):
            why = "updates the weighting net" if meta_update else "gates the weights"
            raise ValueError(
                f"step {self.steps_done} {why} and needs a meta batch; pass x_meta and y_meta "
                "(see needs_meta_batch())"
            )
        if meta_update or gated:
            self._check_batches(x, y, x_meta, y_meta)
            snapshot = ForwardSnapshot.capture(self.model, x.device)
        elif self.checks:
            self._check_batch(x, y, "training")
        with (
            self._watching(meta_update or gated, x.device) as call,
            inputs_named(x, "training"),
        ):
            if recompute:  # on buffer copies: the real forward comes after the meta step
                output = self._functional(snapshot.buffer_copies(), x)
            else:
                output = self._forward(x)
        terms = self._per_sample(output, y, "training")
        features, pending = self.inputs.batch(output, terms.losses, _labels(terms, y), index)
        meta_loss = None
        if meta_update:
            problem = self._problem(
                x,
                y,
                output,
                terms,
                snapshot,
                x_meta,
                y_meta,
                call,
                features,
                keep_graph=not recompute,
            )
            hyper, meta_loss = HYPERGRADIENTS[self.hypergrad](problem)
            if self.checks:
                raise_if_not_finite(
                    self.steps_done,
                    training_loss=terms.weighted.detach(),
                    meta_loss=meta_loss,
                    weight_net_gradient=torch.cat([g.reshape(-1) for g in hyper]),
                )
            self.weight_optimizer.zero_grad(set_to_none=True)
            for p, g in zip(self._weight_params, hyper, strict=True):
                p.grad = g
            self.weight_optimizer.step()
        if recompute:
            output, terms = self._replayed_forward(x, y, snapshot)
        gate = None
        if gated:
            scores = self._sample_scores(x, y, terms, snapshot, x_meta, y_meta, call)
            if self.checks:
                raise_if_not_finite(self.steps_done, sample_meta_gradient=scores)
            gate = scores < 0
        with torch.no_grad():
            weights = self.weights(features, _labels(terms, y))
            if gate is not None:
                weights = weights * gate.to(weights.dtype)
        if self.reducer is None:
            with torch.no_grad():
                coefficients = normalize_weights(weights, self.normalize)
                coefficients = coefficients.to(terms.weighted.dtype)
            loss = terms.value(coefficients, self._unweighted_mean(terms))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            coefficients, loss, _ = weighted_backward(
                terms.weighted,
                weights,
                self.normalize,
                self.optimizer,
                self.reducer,
                unweighted=terms.unweighted,
            )
        if self.checks:  # the update's own gradient, before it touches the model
            raise_if_not_finite(
                self.steps_done,
                training_loss=terms.weighted.detach(),
                model_gradient=gradient_norms(self.optimizer),
            )
        self.optimizer.step()
        self.inputs.commit(pending)  # the per-sample averages of a step that succeeded
        result = StepResult(
            losses=terms.losses.detach(),
            weights=weights,
            coefficients=coefficients,
            loss=loss.detach(),
            meta_loss=meta_loss,
            step=self.steps_done,
            gate=gate,
        )
        self.steps_done += 1
        return result

    def _replayed_forward(
        self, x: torch.Tensor, y: torch.Tensor, snapshot: ForwardSnapshot
    ) -> tuple[Any, WeightedLoss]:
        """The real forward of a low-memory step: the model itself, so its buffers move
        now (once per step), run with the RNG state of the first pass, so dropout draws the
        masks the hypergradient saw. The RNG then continues as after the default path."""
        with snapshot.replaying_rng():
            output = self._forward(x)
        return output, self._per_sample(output, y, "training")

    def state_dict(self) -> dict[str, Any]:
        """The reweighter's own state: step count, weighting net and its optimizer, and the
        per-sample averages its weighting net reads (only when it reads some).

        The model and its optimizer belong to the caller and are saved by the caller.
        """
        state = {
            "steps_done": self.steps_done,
            "weight_net": self.weight_net.state_dict(),
            "weight_optimizer": (
                None if self.weight_optimizer is None else self.weight_optimizer.state_dict()
            ),
        }
        dynamics = self.inputs.state_dict()
        if dynamics:
            state["dynamics"] = dynamics
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.inputs.needs_index:  # first: a mismatch leaves everything as it was
            self.inputs.load_state_dict(state.get("dynamics", {}))
        self.steps_done = int(state["steps_done"])
        self.weight_net.load_state_dict(state["weight_net"])
        if self.weight_optimizer is not None:
            self.weight_optimizer.load_state_dict(state["weight_optimizer"])


def _decay(weight_net: nn.Module) -> float:
    """The decay of the per-sample averages ``weight_net`` reads (unused without them)."""
    decay = getattr(weight_net, "dynamics_decay", None)
    return DEFAULT_DECAY if decay is None else float(decay)


def _history(weight_net: nn.Module) -> int:
    """The length of the loss sequence ``weight_net`` reads (unused without one)."""
    history = getattr(weight_net, "history", None)
    return DEFAULT_HISTORY if history is None else int(history)


def check_gate(gate: str, hypergrad: str) -> None:
    """Reject an unknown gate, or one the hypergradient mode cannot support, naming the fix."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    if gate != "none" and hypergrad not in HYPERGRAD_MODES:
        raise ValueError(
            f"gate={gate!r} needs each sample's exact meta gradient over every trainable "
            f"parameter, but hypergrad={hypergrad!r} restricts the virtual step to part of "
            "the model; use hypergrad='fast' or 'reverse' with the gate, or gate='none'"
        )


def _labels(terms: WeightedLoss, y: torch.Tensor) -> torch.Tensor:
    """The label of each term of the objective, for weighting nets that take labels."""
    return y if terms.weigh_labels is None else terms.weigh_labels
