"""The training run behind :class:`mwnet.sklearn.MetaWeightClassifier`, in torch alone.

It takes tensors already validated and label-encoded, so it neither imports nor knows
scikit-learn. One run: an MLP trained by SGD for a number of epochs over shuffled
mini-batches; with ``method="mwnet"`` or ``"cmwnet"`` each step is a
:class:`~mwnet.MetaReweighter` step against a meta batch drawn from the trusted set or,
without one, from a pseudo-meta set picked again at the start of every epoch after a
cross-entropy warm-up (:func:`~mwnet.data.pseudo_meta.select_pseudo_meta`). Every step's
per-sample losses and weights and one evaluation pass per epoch go into a
:class:`~mwnet.SampleSignals`, which is what the estimator's ``weights_`` and
``label_issues_`` are read from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.core import ClassAwareWeightNet, MetaReweighter, WeightNet
from mwnet.data.pseudo_meta import select_pseudo_meta
from mwnet.run.signals import EpochPredictions, SampleSignals

METHODS = ("mwnet", "cmwnet", "ce")
"""``mwnet``: Meta-Weight-Net's 1-100-1 weighting net; ``cmwnet``: CMW-Net's class-aware
net (one head per group of classes by observed count); ``ce``: plain cross-entropy, every
sample weighted alike (the baseline)."""

PREDICT_ROWS = 8192
"""Rows per forward when scoring or predicting, to bound memory on large inputs."""


@dataclass(frozen=True)
class TrainingSpec:
    """Everything a run depends on besides its data (see the estimator's parameters)."""

    hidden: tuple[int, ...]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    method: str
    hypergrad: str
    weight_lr: float
    pseudo_meta_per_class: int
    warmup_epochs: int
    seed: int
    device: torch.device


@dataclass
class Trained:
    """What a run leaves: the model, the weighting net (None for ``ce``) and the record."""

    model: nn.Module
    weight_net: nn.Module | None
    signals: SampleSignals
    meta_sizes: list[int]
    """The meta set's size in each epoch (0: no weighting that epoch: ``ce`` or warm-up)."""


def mlp(features: int, hidden: tuple[int, ...], classes: int) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them; ``hidden=()`` is a linear
    (multinomial logistic) model."""
    layers: list[nn.Module] = []
    width = features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for every row of ``x``, in eval mode and without a graph."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(part) for part in x.split(PREDICT_ROWS)])
    finally:
        model.train(was_training)


def cycling_batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` samples, drawn without replacement pass after pass (a fresh
    permutation per pass); a set smaller than ``size`` gives the whole set each time."""
    size = min(size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):  # full batches only, as a drop_last loader
            yield order[start : start + size]


def train(
    spec: TrainingSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    trusted: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
) -> Trained:
    """Train an MLP on ``(x, y)``; see the module docstring.

    ``x`` is float (n, d) and ``y`` int64 class indices (n,), on ``spec.device``;
    ``trusted`` the trusted set in the same form, or None for the pseudo-meta path.
    Raises FloatingPointError, naming the epoch and the fix, if the loss diverges.
    """
    device = spec.device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's global RNG is left alone
        torch.manual_seed(spec.seed)
        model = mlp(x.shape[1], spec.hidden, num_classes).to(device)
        weight_net = _weight_net(spec.method, y, num_classes)
        if weight_net is not None:
            weight_net = weight_net.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    reweighter = None
    if weight_net is not None:
        weight_optimizer = torch.optim.Adam(
            weight_net.parameters(), lr=spec.weight_lr, weight_decay=1e-4
        )
        reweighter = MetaReweighter(
            model, optimizer, weight_net, weight_optimizer, hypergrad=spec.hypergrad
        )
    shuffle = torch.Generator().manual_seed(spec.seed)
    meta_draw = torch.Generator().manual_seed(spec.seed + 1)
    signals = SampleSignals(y, num_classes)
    meta_sizes: list[int] = []
    meta: tuple[torch.Tensor, torch.Tensor] | None = trusted
    meta_batches = None if trusted is None else _meta_batches(trusted, spec, meta_draw)
    for epoch in range(spec.epochs):
        if reweighter is not None and trusted is None and epoch >= spec.warmup_epochs:
            meta = _pseudo_meta(model, x, y, spec.pseudo_meta_per_class, num_classes)
            meta_batches = _meta_batches(meta, spec, meta_draw)
        weighting = reweighter is not None and meta_batches is not None
        meta_sizes.append(len(meta[1]) if weighting and meta is not None else 0)
        model.train()
        try:
            for index in torch.randperm(len(y), generator=shuffle).split(spec.batch_size):
                at = index.to(device)
                if weighting:
                    assert reweighter is not None and meta_batches is not None
                    xm, ym = next(meta_batches)
                    info = reweighter.step(x[at], y[at], xm, ym)
                    signals.record_step(index, info.losses, info.weights)
                else:
                    signals.record_step(index, _plain_step(model, optimizer, x[at], y[at]))
        except FloatingPointError as err:
            raise FloatingPointError(
                f"training diverged in epoch {epoch + 1} ({err}); lower lr (now {spec.lr}) "
                "or standardise the features (e.g. a StandardScaler in a Pipeline)"
            ) from err
        signals.record_epoch(EpochPredictions.from_logits(logits_of(model, x), y))
        if log is not None:
            log(_epoch_line(epoch, spec.epochs, signals, meta_sizes[-1]))
    model.eval()
    return Trained(model=model, weight_net=weight_net, signals=signals, meta_sizes=meta_sizes)


def _weight_net(method: str, y: torch.Tensor, num_classes: int) -> nn.Module | None:
    if method == "ce":
        return None
    if method == "mwnet":
        return WeightNet()
    if method == "cmwnet":  # groups by the observed counts, as CMW-Net does
        return ClassAwareWeightNet(torch.bincount(y.cpu(), minlength=num_classes))
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _meta_batches(
    meta: tuple[torch.Tensor, torch.Tensor], spec: TrainingSpec, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x_meta, y_meta = meta
    for index in cycling_batches(len(y_meta), spec.batch_size, generator):
        at = index.to(x_meta.device)
        yield x_meta[at], y_meta[at]


def _pseudo_meta(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, per_class: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``per_class`` lowest-loss samples of each observed class under the current model,
    with their observed labels (CMW-Net-SL's pseudo-meta set, scored by the model)."""
    losses = F.cross_entropy(logits_of(model, x), y, reduction="none")
    chosen = select_pseudo_meta(losses, y, per_class, num_classes).indices.to(x.device)
    return x[chosen], y[chosen]


def _plain_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One cross-entropy step (the baseline, and the warm-up); returns the per-sample
    losses before the update, as a reweighter step does."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    loss = losses.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the cross-entropy loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses.detach()


def _epoch_line(epoch: int, epochs: int, signals: SampleSignals, meta_size: int) -> str:
    agree = float((signals.last_pred == signals.labels).double().mean())
    meta = f", meta set {meta_size}" if meta_size else ", no weighting"
    return f"epoch {epoch + 1}/{epochs}: agreement with the given labels {agree:.3f}{meta}"
