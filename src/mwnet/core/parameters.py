"""Which parameters a virtual step moves."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def virtual_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[list[str], list[torch.Tensor], list[int]]:
    """Names, tensors and param-group indices of the trainable parameters ``optimizer`` holds.

    A parameter the optimizer does not update would not move in a real step either, so it
    takes no virtual step (a warning names it); frozen parameters (requires_grad=False)
    are left out silently. Groups are named by index, not held by reference:
    ``optimizer.load_state_dict`` replaces the group dicts, and a virtual step must read the
    learning rate a schedule sets in the current ones.
    """
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "model has no trainable parameters (none, or all requires_grad=False); "
            "it needs at least one parameter to train"
        )
    chosen = [(n, p) for n, p in trainable if id(p) in group_of]
    left_out = [n for n, p in trainable if id(p) not in group_of]
    if not chosen:
        raise ValueError(
            "the optimizer holds none of the model's trainable parameters; build it from "
            "model.parameters()"
        )
    if left_out:
        warnings.warn(
            f"{len(left_out)} trainable model parameters are not in the optimizer and are "
            f"left out of the virtual step (first: {left_out[0]!r})",
            stacklevel=3,
        )
    return [n for n, _ in chosen], [p for _, p in chosen], [group_of[id(p)] for _, p in chosen]
