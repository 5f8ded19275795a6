"""The weighting network (V-Net): a tiny MLP from a sample's loss to its weight."""

from __future__ import annotations

import itertools
import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn


class WeightNet(nn.Module):
    """MLP ``1 -> hidden -> ... -> 1`` with ReLU hidden layers and a sigmoid output.

    The paper's V-Net is ``WeightNet()`` (one hidden layer of 100 units, PyTorch's
    default ``nn.Linear`` initialisation). Width and depth matter little for
    accuracy (the paper reports 1-50-1 ... 1-100-100-1 within about one point),
    so both are configurable but rarely worth tuning.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers (``depth=0`` gives a logistic map of the loss).

    Input is a vector of per-sample losses, shape ``(n,)`` or ``(n, 1)``; the
    output has the same shape and lies in (0, 1).
    """

    takes_labels = False
    """The weighting-net convention: a net whose ``takes_labels`` is true is called as
    ``net(losses, labels)`` (see :class:`mwnet.ClassAwareWeightNet`); others as
    ``net(losses)``."""

    def __init__(self, hidden: int = 100, depth: int = 1) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"WeightNet hidden width must be >= 1, got {hidden}")
        if depth < 0:
            raise ValueError(f"WeightNet depth must be >= 0, got {depth}")
        self.hidden, self.depth = hidden, depth
        widths: Sequence[int] = [1, *([hidden] * depth), 1]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        if losses.dim() == 1:
            return torch.sigmoid(self.net(losses.unsqueeze(1))).squeeze(1)
        if losses.dim() == 2 and losses.shape[1] == 1:
            return torch.sigmoid(self.net(losses))
        raise ValueError(
            f"WeightNet takes per-sample losses of shape (n,) or (n, 1), got {tuple(losses.shape)}"
        )


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
