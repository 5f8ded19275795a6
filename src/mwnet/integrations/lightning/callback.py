"""Meta-Weight-Net and CMW-Net for a LightningModule, as a Trainer callback.

The module stays as it is: ``Trainer(callbacks=[MetaWeighting(trusted_loader)])``. For the
length of ``fit`` the callback switches the module to manual optimisation and runs, in
place of its ``training_step``, the step of :class:`mwnet.methods.MetaWeightNet` (all the
work is :class:`mwnet.MetaReweighter`'s): the module's own ``forward``, its optimizer from
``configure_optimizers`` (through Lightning's optimizer wrapper, so ``global_step``,
``on_before_optimizer_step`` and checkpoints count the steps as usual) and a per-sample
loss, with the trusted batches drawn from a second loader. A callback rather than a base
class or a wrapper module, so that the module's class, its checkpoint keys and
``load_from_checkpoint`` stay what they were; the weighting net and its optimizer live in
the callback's own entry of every Lightning checkpoint.

Under Lightning's DDP strategy, the meta step cannot use DDP's gradient hooks: the virtual
step and the hypergradient are computed with ``torch.func.functional_call`` and
``torch.autograd.grad``, which DDP never sees. Every sum the algorithm needs over the
processes goes through :class:`mwnet.core.GradientReducer` on the default process group
instead, and DDP reduces nothing: under manual optimisation Lightning's DDP strategy arms
DDP's reducer only inside ``manual_backward``, which the step never calls (the tests count
DDP's all-reduces to show it). Each process trains on its share of the training batch
(Lightning's ``DistributedSampler``) and of the trusted batch
(:func:`~mwnet.integrations.lightning.trusted.shard_for_ranks`), and every process ends
each step with the parameters one process would reach on the union of the shards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.integrations.lightning.schedules import check_schedules, epoch_finished, step_schedules
from mwnet.integrations.lightning.trusted import (
    TrustedBatches,
    Unpack,
    inputs_and_labels,
    shard_for_ranks,
)
from mwnet.methods.meta_weight_net import MetaWeightNet

PRECISIONS: tuple[str, ...] = ("32-true", "64-true")
"""Trainer precisions the step runs under. Mixed precision is refused: "16-mixed" scales
the loss in ``manual_backward`` (which the step does not call) and unscales in the
optimizer step, and neither mixed mode is tested here."""

_FIXED = ("self", "model", "optimizer", "meta_batches", "reducer", "loss_fn")
"""MetaWeightNet arguments the callback fills in itself."""
OPTIONS: tuple[str, ...] = tuple(
    name for name in inspect.signature(MetaWeightNet.__init__).parameters if name not in _FIXED
)
"""The options of :class:`mwnet.methods.MetaWeightNet` that ``MetaWeighting`` passes on."""


class MetaWeighting(pl.Callback):
    """Train a LightningModule with Meta-Weight-Net (Shu et al., 2019) or, given
    ``class_counts``, CMW-Net (Shu et al., 2023): each training sample's loss is weighted
    by a small net learned on a trusted set, one meta step per training step.

    Args:
        trusted: the trusted (meta) set's loader, yielding ``(inputs, labels, ...)``
            batches (or what ``unpack`` reads), drawn in passes, one batch per
            weighting-net update. Its ``batch_size`` is per process, like the training
            loader's; under DDP a plain ``DataLoader`` is split over the processes with a
            ``DistributedSampler`` as Lightning splits the training loader.
        loss_fn: per-sample training loss ``(output, labels) -> (n,)``, ``output`` being
            what the module's ``forward`` returns. None: the module's own
            ``per_sample_loss(output, labels)`` if it defines one, else cross-entropy. The
            meta loss is its mean on the trusted batch.
        unpack: ``batch -> (inputs, labels)`` for training and trusted batches alike;
            default: the first two entries of a tuple or list.
        log_prefix: the step logs ``{prefix}loss`` (the weighted training loss over the
            global batch), ``{prefix}meta_loss`` (on steps that update the weighting net)
            and ``{prefix}weight`` (the mean raw weight in (0, 1), averaged over
            processes) with the module's ``self.log``; None logs nothing.
        **options: any option of :class:`mwnet.methods.MetaWeightNet` (see :data:`OPTIONS`):
            ``hypergrad``, ``normalize``, ``virtual_step``, ``meta_interval``,
            ``class_counts`` (CMW-Net), ``weight_net``, ``weight_lr``, ``frozen``, ...

    What changes for the module during ``fit``, and is put back afterwards:
    ``automatic_optimization`` is False and ``training_step`` is the meta step, which
    returns ``{"loss", "losses", "weights", "meta_loss"}`` (detached; ``losses`` and
    ``weights`` per sample of this process's batch) to ``on_train_batch_end``. Learning-rate
    schedulers from ``configure_optimizers`` are stepped where automatic optimisation steps
    them (:mod:`~mwnet.integrations.lightning.schedules`). Validation, testing and
    prediction are the module's own.

    Needs one optimizer, ``accumulate_grad_batches=1``, no ``gradient_clip_val`` (clip in
    ``on_before_optimizer_step`` with ``self.clip_gradients``, which runs on the global
    gradient), a single-device or DDP strategy and precision "32-true" or "64-true".

    The weighting net is built when ``fit`` starts (after the model moved to its device);
    under DDP rank 0's initial net is broadcast, as DDP broadcasts the model. Each
    checkpoint holds the weighting net, its optimizer, the step count and the trusted
    loader's position, so resuming from it continues as the uninterrupted run would (the
    trusted loader's order must then be reproducible: unshuffled, or a sampler with
    ``set_epoch``, which every DDP run has). A second ``fit`` with the same callback
    continues the weighting net where the first left it.

    Departures from mwnet's own data parallelism (``mwnet train`` under torchrun): there,
    every rank draws the same global batches and takes a contiguous shard of each;
    here each process's batches come from a ``DistributedSampler``, as Lightning gives
    them. The weights are normalised over the union of the shards either way, so the step
    is the one-process step on that union. BatchNorm running statistics follow DDP (rank
    0's are broadcast before a forward only when DDP synchronises, which it does not in
    manual optimisation: each process keeps its own).
    """

    def __init__(
        self,
        trusted: Iterable,
        *,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
        unpack: Unpack = inputs_and_labels,
        log_prefix: str | None = "mwnet/",
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(
                f"MetaWeighting got unknown option(s) {unknown}; the options of "
                f"mwnet.methods.MetaWeightNet are {list(OPTIONS)}"
            )
        self.trusted = trusted
        self.loss_fn = loss_fn
        self.unpack = unpack
        self.log_prefix = log_prefix
        self.options = options
        self.method: MetaWeightNet | None = None
        """The method that runs the steps, from the first ``fit`` on."""
        self._stream: TrustedBatches | None = None
        self._pending: dict[str, Any] | None = None
        self._restore: Callable[[], None] | None = None

    @property
    def state_key(self) -> str:
        """The callback's entry in a checkpoint: one name for this class and any subclass,
        so that a run resumes whatever the callback's class was called."""
        return "MetaWeighting"

    @property
    def weight_net(self) -> nn.Module:
        """The weighting net (available once ``fit`` has started)."""
        if self.method is None:
            raise RuntimeError("the weighting net is built when Trainer.fit starts")
        return self.method.reweighter.weight_net

    def weights(self, losses: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The learned weights V(L) in (0, 1) of per-sample losses of shape (n,) (with the
        samples' labels for CMW-Net's class-aware net), without gradient."""
        if self.method is None:
            raise RuntimeError("the weighting net is built when Trainer.fit starts")
        net = self.weight_net
        param = next(net.parameters())
        losses = losses.to(device=param.device, dtype=param.dtype)
        if labels is not None:
            labels = labels.to(param.device)
        with torch.no_grad():
            return self.method.reweighter.weights(losses, labels)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _check_trainer(trainer)
        carry = self._pending
        if carry is None and self.method is not None:  # a second fit goes on from the first
            carry = self.state_dict()
        reducer = GradientReducer() if trainer.world_size > 1 else None
        self._stream = TrustedBatches(
            shard_for_ranks(self.trusted, trainer.global_rank, trainer.world_size),
            to_device=trainer.strategy.batch_to_device,
            unpack=self.unpack,
        )
        loss_fn = self.loss_fn or getattr(pl_module, "per_sample_loss", None)
        self.method = MetaWeightNet(
            pl_module,
            pl_module.optimizers(),  # Lightning's wrapper: its step counts as global_step
            self._stream,
            loss_fn=loss_fn,
            reducer=reducer,
            **self.options,
        )
        if carry is not None:
            self.method.load_state_dict(carry["method"])
            self._stream.load_state_dict(carry["trusted"])
        if reducer is not None:
            _broadcast_from_rank0(self.weight_net)
        self._pending = None
        self._take_over(trainer, pl_module)

    def _take_over(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Make the module's training step the meta step, for this fit only."""
        automatic = module.automatic_optimization
        own = module.__dict__.get("training_step")

        def training_step(batch: Any, batch_idx: int, *args: Any) -> dict[str, Any]:
            return self._step(module, batch)

        def restore() -> None:
            if automatic:
                _carry_step_count(trainer)
            module.automatic_optimization = automatic
            if own is None:
                module.__dict__.pop("training_step", None)
            else:
                module.training_step = own
            self._restore = None

        module.automatic_optimization = False
        module.training_step = training_step
        self._restore = restore

    def _step(self, module: pl.LightningModule, batch: Any) -> dict[str, Any]:
        assert self.method is not None
        x, y = self.unpack(batch)
        out = self.method.step(x, y)
        if self.log_prefix is not None:
            n = len(y)
            module.log(f"{self.log_prefix}loss", out.loss, prog_bar=True, batch_size=n)
            if out.meta_loss is not None:
                module.log(f"{self.log_prefix}meta_loss", out.meta_loss, batch_size=n)
            if out.weights is not None:
                weight = out.weights.mean()
                module.log(f"{self.log_prefix}weight", weight, sync_dist=True, batch_size=n)
        return {
            "loss": out.loss,
            "losses": out.losses,
            "weights": out.weights,
            "meta_loss": out.meta_loss,
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.method is not None
        self.method.begin_epoch(trainer.current_epoch)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step_schedules(trainer, pl_module, "step")
        if epoch_finished(trainer):
            step_schedules(trainer, pl_module, "epoch")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if epoch_finished(trainer):
            step_schedules(trainer, pl_module, "epoch", plateau=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._restore is not None:
            self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._restore is not None:
            self._restore()

    def state_dict(self) -> dict[str, Any]:
        """The weighting net, its optimizer, the step count and the trusted loader's
        position: Lightning saves it in the callback's entry of every checkpoint."""
        if self.method is None or self._stream is None:
            return dict(self._pending or {})
        return {"method": self.method.state_dict(), "trusted": self._stream.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Lightning calls it before the optimizers exist, so the
        state waits for ``on_fit_start``, which builds the method and loads it."""
        self._pending = dict(state_dict) if state_dict else None


def _check_trainer(trainer: pl.Trainer) -> None:
    """Refuse, before the first batch, a Trainer setting the meta step would ignore."""
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ValueError(
            f"MetaWeighting runs on one device or under DDP, not with "
            f"{type(strategy).__name__}: its virtual step needs every parameter whole on "
            'each process; use strategy="ddp" (or "auto" on one device)'
        )
    if trainer.precision not in PRECISIONS:
        raise ValueError(
            f"MetaWeighting supports precision {' or '.join(PRECISIONS)}, got "
            f"{trainer.precision!r}; pass precision='32-true' to the Trainer"
        )
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"accumulate_grad_batches={trainer.accumulate_grad_batches}: each MetaWeighting "
            "step updates the model on its own batch; use a larger batch_size instead"
        )
    if trainer.gradient_clip_val:
        raise ValueError(
            f"gradient_clip_val={trainer.gradient_clip_val}: Lightning clips only under "
            "automatic optimisation; drop it and call self.clip_gradients(optimizer, ...) in "
            "the module's on_before_optimizer_step, which sees the step's gradient"
        )
    if len(trainer.optimizers) != 1:
        raise ValueError(
            f"configure_optimizers returned {len(trainer.optimizers)} optimizers; MetaWeighting "
            "trains the module with exactly one (its weighting net has its own)"
        )
    check_schedules(trainer)


def _carry_step_count(trainer: pl.Trainer) -> None:
    """Let ``trainer.global_step`` go on counting the steps taken once the module is back
    in automatic optimisation, where Lightning reads another counter than in manual."""
    loop = trainer.fit_loop.epoch_loop
    steps = loop.manual_optimization.optim_step_progress.total.completed
    total = loop.automatic_optimization.optim_progress.optimizer.step.total
    total.ready = total.completed = steps


def _broadcast_from_rank0(module: nn.Module) -> None:
    """Every process starts from rank 0's weighting net, as DDP starts every process from
    rank 0's model."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)
