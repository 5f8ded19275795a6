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
from torch.func import functional_call


class PenultimateFeatures(nn.Module):
    """``forward(x)``: the input of the last ``nn.Linear`` that ran in ``network(x)``,
    flattened to (batch, features). ``network`` is held, not copied: the features are
    those of its current weights and mode."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_output(x)[1]

    def with_output(
        self, x: torch.Tensor, substitutes: dict[str, torch.Tensor] | None = None
    ) -> tuple[Any, torch.Tensor]:
        """``network(x)`` and its representation from that one forward: a method that
        trains on the output and reads the representation (MLC's label corrector) runs
        the network once. ``substitutes`` (parameters or buffers by name) run it through
        ``torch.func.functional_call`` instead, e.g. on copies of its buffers."""
        seen: list[torch.Tensor] = []

        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0])

        linears = [m for m in self.network.modules() if isinstance(m, nn.Linear)]
        handles = [m.register_forward_pre_hook(record) for m in linears]
        try:
            if substitutes is None:
                output = self.network(x)
            else:
                output = functional_call(self.network, substitutes, (x,))
        finally:
            for handle in handles:
                handle.remove()
        if not seen:
            raise ValueError(
                f"{type(self.network).__name__} ran no nn.Linear layer: its representation "
                "is read as the input of its last nn.Linear (the classifier)"
            )
        return output, seen[-1].flatten(1)


def feature_width(network: nn.Module) -> int:
    """The width of :class:`PenultimateFeatures` of ``network`` without running it: the
    ``in_features`` of its last ``nn.Linear`` in module order (the classifier, in the
    models of :mod:`mwnet.models` and torchvision's)."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(network).__name__} has no nn.Linear layer: its representation is read "
            "as the input of its last nn.Linear (the classifier)"
        )
    return linears[-1].in_features
