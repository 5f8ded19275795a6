"""The weighting network (V-Net): a tiny MLP from a sample's loss (and optionally other
per-sample inputs, :mod:`mwnet.core.weight_inputs`) to its weight."""

from __future__ import annotations

import itertools
import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mwnet.core.weight_inputs import (
    DEFAULT_DECAY,
    DEFAULT_HISTORY,
    LOSS_ONLY,
    check_decay,
    check_history,
    check_inputs,
    describe,
    input_matrix,
    input_width,
    reads_dynamics,
    reads_history,
)


class WeightNet(nn.Module):
    """MLP ``1 -> hidden -> ... -> 1`` with ReLU hidden layers and a sigmoid output.

    The paper's V-Net is ``WeightNet()`` (one hidden layer of 100 units, PyTorch's
    default ``nn.Linear`` initialisation). Width and depth matter little for
    accuracy (the paper reports 1-50-1 ... 1-100-100-1 within about one point),
    so both are configurable but rarely worth tuning.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers (``depth=0`` gives a logistic map of the loss).
        inputs: what the net reads about each sample, in the order of its input columns
            (names of :data:`~mwnet.core.weight_inputs.WEIGHT_INPUTS`); default the loss
            alone, the paper's net, built and computing bit for bit as before.
        num_classes: the width of the one-hot ``class`` input (needed only with it).
        dynamics_decay: the decay of the per-sample averages among the inputs (``loss_ema``,
            ``margin``, ``confidence``, ``agreement``): part of what the inputs mean, so the
            net carries it and a reused net is fed the same averages. None without them.
        history: K, the visits of the ``loss_history`` input (its K columns): recorded
            like the decay; None without it.

    A loss-only net takes per-sample losses of shape ``(n,)`` or ``(n, 1)`` and returns
    the same shape; a net with more inputs takes their ``(n, width)`` matrix and returns
    ``(n, 1)``. The weights lie in (0, 1). :class:`~mwnet.MetaReweighter` builds the
    matrix from the net's ``inputs``.
    """

    takes_labels = False
    """The weighting-net convention: a net whose ``takes_labels`` is true is called as
    ``net(losses, labels)`` (see :class:`mwnet.ClassAwareWeightNet`); others as
    ``net(losses)``."""

    def __init__(
        self,
        hidden: int = 100,
        depth: int = 1,
        *,
        inputs: Sequence[str] = LOSS_ONLY,
        num_classes: int | None = None,
        dynamics_decay: float | None = DEFAULT_DECAY,
        history: int | None = DEFAULT_HISTORY,
    ) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"WeightNet hidden width must be >= 1, got {hidden}")
        if depth < 0:
            raise ValueError(f"WeightNet depth must be >= 0, got {depth}")
        self.hidden, self.depth = hidden, depth
        self.inputs = check_inputs(inputs)
        self.num_classes = int(num_classes) if "class" in self.inputs and num_classes else None
        self.dynamics_decay = dynamics_decay_of(self.inputs, dynamics_decay)
        self.history = history_of(self.inputs, history)
        self.width = input_width(self.inputs, num_classes, self.history)
        widths: Sequence[int] = [self.width, *([hidden] * depth), 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        column = input_matrix(losses, self.inputs, self.width, "WeightNet")
        out = torch.sigmoid(self.net(column))
        return out.squeeze(1) if losses.dim() == 1 else out

    def extra_repr(self) -> str:
        if self.inputs == LOSS_ONLY:
            return ""
        decay = "" if self.dynamics_decay is None else f", dynamics_decay={self.dynamics_decay}"
        return f"inputs: {describe(self.inputs, self.num_classes, self.history)}{decay}"


def dynamics_decay_of(inputs: Sequence[str], decay: float | None) -> float | None:
    """The decay a net with ``inputs`` records: None unless it reads a per-sample average."""
    if not reads_dynamics(inputs):
        return None
    if decay is None:
        raise ValueError(
            "a weighting net that reads per-sample averages needs their dynamics_decay"
        )
    return check_decay(decay)


def history_of(inputs: Sequence[str], history: int | None) -> int | None:
    """The sequence length a net with ``inputs`` records: None unless it reads
    ``loss_history``."""
    if not reads_history(inputs):
        return None
    if history is None:
        raise ValueError("a weighting net that reads loss_history needs its history (K)")
    return check_history(history)


WeightInit = Literal["default", "flat"]
WEIGHT_INITS: tuple[str, ...] = typing.get_args(WeightInit)
"""How a fresh weighting net starts: ``default`` (PyTorch's ``nn.Linear`` initialisation,
the paper's) or ``flat`` (:func:`start_flat`)."""


def start_flat(weight_net: nn.Module) -> nn.Module:
    """Zero the net's output layer (its last ``nn.Linear``), in place, and return the net.

    Every sample then starts at weight ``sigmoid(0) = 0.5`` whatever its loss (and its
    class, for :class:`~mwnet.ClassAwareWeightNet`), so under ``sum`` or ``mean``
    normalisation the first virtual step is plain cross-entropy's. A default-initialised
    net instead starts with a random slope over the losses, up or down by the seed, which
    the first meta steps must undo. The hidden layers keep their random initialisation, so
    the output layer's gradient is non-zero and the curve moves from the first meta step.
    """
    last = [m for m in weight_net.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise TypeError(f"{type(weight_net).__name__} has no nn.Linear output layer to zero")
    with torch.no_grad():
        last[-1].weight.zero_()
        if last[-1].bias is not None:
            last[-1].bias.zero_()
    return weight_net


def takes_labels(weight_net: nn.Module) -> bool:
    """Whether ``weight_net`` is called with each sample's label besides its loss."""
    return bool(getattr(weight_net, "takes_labels", False))


def net_inputs(weight_net: nn.Module) -> tuple[str, ...]:
    """What ``weight_net`` reads about each sample: its ``inputs`` attribute, or the loss
    alone for a net without one (a user's own net, as before)."""
    return tuple(getattr(weight_net, "inputs", LOSS_ONLY))
