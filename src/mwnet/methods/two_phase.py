"""What the methods that first train only to estimate something share: the length of
that first phase, and a copy of the model to start the second phase from."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def estimation_epochs(method: str, estimate_epochs: int | None, epochs: int | None) -> int:
    """E, the epochs of the first phase: ``estimate_epochs``, or the configured ``epochs``
    when it is None or 0 (a first phase as long as the training it precedes).

    Raises:
        ValueError: a negative or non-integer count, or no count at all.
    """
    for name, value in (("estimate_epochs", estimate_epochs), ("epochs", epochs)):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 0
        if value is not None and bad:
            raise ValueError(f"{method}: {name} must be an integer >= 0, got {value!r}")
    chosen = estimate_epochs or epochs
    if not chosen:
        raise ValueError(
            f"{method} trains on the noisy labels for a first phase of estimate_epochs "
            f"epochs (default: optim.epochs); got estimate_epochs={estimate_epochs!r} and "
            f"epochs={epochs!r}: set method.{method.replace('-', '_')}.estimate_epochs >= 1"
        )
    return int(chosen)


def model_copy(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state dict (or of a state dict)."""
    state = source.state_dict() if isinstance(source, nn.Module) else source
    return {k: v.detach().clone() for k, v in state.items()}
