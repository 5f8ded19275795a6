"""What a method is, for everything outside it: its options, what it reads, how it is built.

A method is registered once with a :class:`MethodDescriptor`. The config, the experiment
builder, the loop, the bench and the suite ask the descriptor (does it read the meta
set? a teacher? can it be compiled?), never the method's name, so a new method, the
user's own included (:func:`mwnet.register_method`), needs no edit anywhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from mwnet.core.reducer import GradientReducer
from mwnet.methods.base import Method


@dataclass(frozen=True)
class Knob:
    """The method's one main hyperparameter besides the learning rate, which the suite
    searches: a key of its option group and the values, the default first."""

    key: str
    """Dotted within ``method.``, e.g. ``focal.gamma``."""
    tag: str
    """Short name in run-directory names, e.g. ``gamma`` in ``focal-lr0.05-gamma2-seed0``."""
    label: str
    """Name in the report, e.g. ``focal gamma``."""
    values: tuple[float, ...] = ()


Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``reduce(logits, labels) -> (n, c)`` table of per-sample values."""


class SamplePass(Protocol):
    """Per-sample values of a model over a fixed set of samples (the whole training set, or
    the trusted set), for methods that look at every sample between epochs (GLC's
    corruption estimate, DivideMix's loss mixture, D2L's dimensionality).

    A pass runs the model in eval mode (BatchNorm on running statistics) on the samples
    without augmentation, normalised like the training batches, and restores the model's
    mode. Under data parallelism each rank runs its contiguous shard and every rank gets
    the whole table, so every rank makes the same decision from it.
    """

    labels: torch.Tensor
    """The samples' labels as training sees them (the noisy ones), int64 on the CPU."""

    def __len__(self) -> int: ...

    def __call__(self, model: nn.Module, reduce: Reduction) -> torch.Tensor:
        """``reduce(model(x), y)`` of every sample, in the set's order, as one float64
        ``(n, c)`` table on the CPU. ``model`` may be any module taking the batches, e.g.
        one that returns a network's features instead of its logits."""
        ...

    def subset(self, indices: torch.Tensor) -> SamplePass:
        """The pass over the samples at ``indices`` (positions in this set), in that order:
        for estimates that need only a sample of the set (D2L's dimensionality)."""
        ...


TrainingViews = Callable[[torch.Tensor, int], torch.Tensor]
"""``views(index, seed)``: the training samples at positions ``index`` (on the model's
device), augmented afresh with randomness from ``seed`` and normalised like the training
batches: another view of a batch (DivideMix's second augmentation)."""


@dataclass
class MethodContext:
    """Everything a method may be built from; a builder takes what its descriptor says it
    reads."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    class_counts: torch.Tensor
    options: Mapping[str, Any]
    """Option group name -> that group's options (a dataclass instance)."""
    epochs: int | None = None
    """The configured training epochs (``optim.epochs``)."""
    compile: bool = False
    checks: bool = True
    reducer: GradientReducer | None = None
    weight_net: nn.Module | None = None
    soft_labels: Callable[[torch.Tensor], torch.Tensor] | None = None
    soft_label_model: nn.Module | None = None
    training_set: SamplePass | None = None
    """Per-sample passes over the training set (noisy labels), in training-set order: the
    order of the ``index`` given to :meth:`Method.step`."""
    meta_set: SamplePass | None = None
    """Per-sample passes over the trusted (meta) set, when the run has one."""
    new_network: Callable[[int], nn.Module] | None = None
    """``new_network(k)``: a freshly initialised network of the model's architecture on its
    device, the same for the same ``k`` in every run with this seed (its draw does not
    move the global random state): Co-teaching's and DivideMix's second network."""
    new_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None
    """An optimizer over the given parameters with the run's settings (``optim.*``)."""
    seed: int = 0
    """The run's seed, for methods that draw their own random numbers."""
    augment: TrainingViews | None = None
    """Fresh augmented views of training samples by position (:data:`TrainingViews`):
    the same augmentation as the training batches (none if ``data.augment=false``),
    drawn from the given seed, so that every rank draws the same view of a sample."""

    def compiled_model(self) -> nn.Module:
        """The model, through ``torch.compile`` when ``compile`` asks for it (a plain step:
        model(x), then one backward)."""
        return torch.compile(self.model) if self.compile else self.model

    def common(self) -> dict[str, Any]:
        """The keyword arguments every method takes."""
        return {"checks": self.checks, "reducer": self.reducer}


@dataclass(frozen=True)
class MethodDescriptor:
    """A registered method: its name, builder, option groups and what it reads."""

    name: str
    build: Callable[[MethodContext], Method]
    options: Mapping[str, type] = field(default_factory=dict)
    """Option groups it reads, ``{group: dataclass}``: ``method.<group>.<field>`` in the
    config. Methods that read the same options share a group (the MW-Net family's
    ``mwnet``); a group's dataclass is the same wherever it is read."""
    reads_meta: bool = False
    """It needs a trusted meta set (clean, or a pseudo-meta set with
    ``data.meta_source=auto``)."""
    trains_on_meta: bool = False
    """It trains on the clean meta set as epochs after the configured ones (so it needs a
    clean set, may run with ``optim.epochs=0`` from ``model.init_from``, and cannot change
    its epochs on resume once it is past them)."""
    reads_teacher: bool = False
    """It reads an EMA teacher's soft labels (label correction)."""
    reads_class_counts: bool = False
    reads_index: bool = False
    """It keeps per-sample state across epochs: the loop passes each training batch's
    positions in the training set to ``step`` as ``index``."""
    compiles: bool = False
    """It accepts ``method.compile`` (one forward and one backward per step, or a
    hypergradient mode that compiles)."""
    weighting: bool = False
    """It learns a weighting net (saved as weight_net.pt; ``method.mwnet.net_from`` reuses
    one)."""
    class_aware: bool = False
    """Its weighting net is class-aware (CMW-Net's)."""
    knob: Knob | None = None
    """The hyperparameter the suite searches besides the learning rate."""
    description: str = ""

    def __post_init__(self) -> None:
        for group, kind in self.options.items():
            if not group.isidentifier() or not dataclasses.is_dataclass(kind):
                raise ValueError(
                    f"method {self.name!r}: option group {group!r} must be an identifier "
                    f"mapped to a dataclass, got {kind!r}"
                )

    def default_options(self) -> dict[str, Any]:
        """Each of its option groups at its defaults."""
        return {group: kind() for group, kind in self.options.items()}
