"""Is the head's output what the model returns? Checked on the autograd graph, every step.

``hypergrad="head"`` computes the meta problem's losses from the head layer's own output.
That is the training loss only if nothing learnable acts on that output before the model
returns it. A hidden layer named as the head, or a learnable scale or bias after the real
head, would make the weighting net learn from other logits than the model trains on, and
an equality check at the first step cannot see a transform that starts as the identity
(a learnable temperature of 1) and drifts later. So the check is structural: walk the
autograd graph back from the model's output to the head's output node and look for
trainable parameters entering on the way (or on any path that bypasses the head). It
costs nothing in the usual case, where the model's output *is* the head's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _output_tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for item in output for t in _output_tensors(item)]
    return []


def _parameters_entering(
    tensor: torch.Tensor, head_node: Any, params: dict[int, str]
) -> tuple[bool, list[str]]:
    """Walk back from ``tensor`` without passing ``head_node``: whether it was reached, and
    the names of model parameters met on the way (the walk stops at the first one)."""
    stack, seen, reached = [tensor.grad_fn], set(), False
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node is head_node:
            reached = True
            continue
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in params:
            return reached, [params[id(variable)]]
        stack.extend(fn for fn, _ in node.next_functions)
    return reached, []


def check_head_output(
    model: nn.Module, head_name: str, head_output: torch.Tensor, output: Any, explicit: bool
) -> None:
    """Raise ValueError unless some tensor of the model's ``output`` has the head's shape
    and comes from ``head_output`` through operations that involve no trainable parameter
    (a clone, a cast, a fixed scale, packing into a tuple are fine)."""
    head_node = head_output.grad_fn
    if head_node is None:  # no graph (the head and everything before it frozen): no check
        return
    params = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    found: list[str] = []
    for tensor in _output_tensors(output):
        if tensor.grad_fn is None or tensor.shape != head_output.shape:
            continue
        reached, entering = _parameters_entering(tensor, head_node, params)
        if reached and not entering:
            return
        found = found or entering
    who = f"head={head_name!r}" if explicit else f"the detected head {head_name!r}"
    if found:
        problem = (
            f"trainable parameters act on its output before the model returns it "
            f"({', '.join(found)}): it is a hidden layer, or a learnable transform follows it"
        )
    else:
        shapes = [tuple(t.shape) for t in _output_tensors(output)]
        problem = (
            f"its output {tuple(head_output.shape)} is not what the model returns "
            f"({shapes[0] if len(shapes) == 1 else shapes})"
        )
    raise ValueError(
        f"hypergrad='head': {who} does not produce the model's output: {problem}. Name the "
        "final nn.Linear whose output the model returns (head=...), or use hypergrad='fast'"
    )
