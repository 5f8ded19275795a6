"""Central finite differences, the ground truth the analytic hypergradients are held to."""

from __future__ import annotations

from collections.abc import Callable

import torch


def central_differences(
    params: list[torch.Tensor], value: Callable[[], torch.Tensor], eps: float = 1e-6
) -> torch.Tensor:
    """d value / d params, flattened in order: each entry nudged by ±eps in place (and put
    back), so ``value`` reads the parameters wherever it normally does."""
    numeric = []
    for p in params:
        for i in range(p.numel()):
            values = []
            for delta in (eps, -eps):
                with torch.no_grad():
                    p.view(-1)[i] += delta
                values.append(value())
                with torch.no_grad():
                    p.view(-1)[i] -= delta
            numeric.append((values[0] - values[1]) / (2 * eps))
    return torch.stack(numeric)
