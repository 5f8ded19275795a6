"""Meta-Weight-Net behind the methods interface: the core's MetaReweighter, configured by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from mwnet.core import ClassAwareWeightNet, MetaReweighter, WeightNet
from mwnet.core.hypergrad import HypergradMode
from mwnet.core.reducer import GradientReducer
from mwnet.core.reweighter import Normalization
from mwnet.core.virtual_step import VirtualStepKind
from mwnet.methods.base import Method, StepOutput, next_meta_batch
from mwnet.methods.ce import CrossEntropy

WeightOptimizer = Literal["adam", "sgd"]
WEIGHT_OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


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
        frozen: never update the weighting net: no meta batch is drawn, a step costs a
            plain step plus the tiny net. Needs ``weight_net``.
        warmup_epochs: train the first epochs with plain cross-entropy (CMW-Net on long
            tails: 160 of 200 epochs), the weighting net untouched.
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
        normalize: Normalization = "sum",
        virtual_step: VirtualStepKind = "sgd",
        meta_interval: int = 1,
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
        weight_net: nn.Module | None = None,
        frozen: bool = False,
        warmup_epochs: int = 0,
        checks: bool = True,
        reducer: GradientReducer | None = None,
    ) -> None:
        if frozen and weight_net is None:
            raise ValueError(
                "a frozen weighting net must come from somewhere: pass weight_net (e.g. "
                "mwnet.load_weight_net(path).net), or drop frozen"
            )
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        param = next(model.parameters())
        if weight_net is not None:
            net = weight_net
        elif class_counts is not None:
            net = ClassAwareWeightNet(class_counts, clusters=weight_clusters, hidden=weight_hidden)
        else:
            net = WeightNet(hidden=weight_hidden, depth=weight_depth)
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
            normalize=normalize,
            virtual_step=virtual_step,
            hypergrad=hypergrad,
            head=head,
            meta_interval=meta_interval,
            low_memory=low_memory,
            compile=compile,
            frozen=frozen,
            checks=checks,
            reducer=reducer,
        )
        self.name = "cmwnet" if isinstance(net, ClassAwareWeightNet) else "mwnet"
        self.normalize = normalize
        self.meta_batches = meta_batches
        self.warmup_epochs = warmup_epochs
        self._warmup = CrossEntropy(model, optimizer, checks=checks, reducer=reducer)
        self._warming_up = warmup_epochs > 0
        super().__init__()

    @property
    def steps_done(self) -> int:
        """The reweighter's step count (it decides which steps update the weighting net)."""
        return self.reweighter.steps_done

    @steps_done.setter
    def steps_done(self, value: int) -> None:
        self.reweighter.steps_done = value

    def begin_epoch(self, epoch: int) -> None:
        self._warming_up = epoch < self.warmup_epochs

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if self._warming_up:
            return self._warmup.step(x, y)
        rw = self.reweighter
        x_meta = y_meta = None  # drawn only on the steps that update the weighting net
        if rw.is_meta_step():
            x_meta, y_meta = next_meta_batch(self.meta_batches)
        result = rw.step(x, y, x_meta, y_meta)
        return StepOutput(
            loss=result.loss,
            losses=result.losses,
            weights=result.weights,
            meta_loss=result.meta_loss,
        )

    def weighting_function(self, losses: torch.Tensor) -> torch.Tensor:
        """The current weighting net's V(L) in (0, 1) for losses of shape (n,); for a
        class-aware net, one curve per class cluster, shape (n, K)."""
        net = self.reweighter.weight_net
        param = next(net.parameters())
        losses = losses.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            if isinstance(net, ClassAwareWeightNet):
                return net.curves(losses)
            return self.reweighter.weights(losses)

    def weighting_net(self) -> tuple[nn.Module, str]:
        return self.reweighter.weight_net, self.normalize

    def state_dict(self) -> dict[str, Any]:
        return self.reweighter.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reweighter.load_state_dict(state)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating-point dtype, for a weighting net that computes alongside it."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()
