"""A network's deep representation: the input of its last linear layer, read by a hook.

The models of :mod:`mwnet.models` (and torchvision's, and most users') end in one
``nn.Linear`` classifier and expose no feature method; what that layer receives is the
penultimate representation (D2L's "deep representation"). Hooks are installed only for the
duration of each forward, so the network never carries one between passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PenultimateFeatures(nn.Module):
    """``forward(x)``: the input of the last ``nn.Linear`` that ran in ``network(x)``,
    flattened to (batch, features). ``network`` is held, not copied: the features are
    those of its current weights and mode."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        linears = [m for m in self.network.modules() if isinstance(m, nn.Linear)]
        handles = [m.register_forward_pre_hook(record) for m in linears]
        try:
            self.network(x)
        finally:
            for handle in handles:
                handle.remove()
        if not seen:
            raise ValueError(
                f"{type(self.network).__name__} ran no nn.Linear layer: its representation "
                "is read as the input of its last nn.Linear (the classifier)"
            )
        return seen[-1].flatten(1)
