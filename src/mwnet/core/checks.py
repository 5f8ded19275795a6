"""Input and numerical checks whose error messages name the problem and the fix."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """A step met NaN/Inf and stopped; the step changed nothing (see :func:`step_guard`)."""


def check_batch(x: torch.Tensor, y: torch.Tensor, which: str) -> None:
    """A batch must be non-empty and hold one label per input."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{which} batch: inputs and labels must be tensors")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{which} batch is empty (inputs of shape {tuple(x.shape)})")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{which} batch: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}; "
            "inputs and labels must have the same first dimension"
        )


def check_labels(y: torch.Tensor, num_classes: int, which: str) -> None:
    """Integer class labels must lie in [0, num_classes) of the model's output."""
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        return
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{which} labels out of range: label {int(y[first])} at position {first}, but the "
            f"model outputs {num_classes} classes; labels must lie in [0, {num_classes - 1}]"
        )


def check_per_sample(losses: torch.Tensor, n: int, which: str) -> None:
    """The loss function must return one value per sample, not a reduced scalar."""
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (n,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
        raise ValueError(
            f"loss_fn must return one loss per sample, shape ({n},) for this {which} batch, "
            f"got {shape}; use reduction='none' (e.g. F.cross_entropy(logits, y, "
            "reduction='none'))"
        )


def raise_if_not_finite(step: int, **values: torch.Tensor | None) -> None:
    """Stop with a clear error on NaN/Inf instead of silently corrupting the model.

    All values are checked with a single host synchronisation; the message names the
    quantity, the step and (for per-sample losses) which samples.
    """
    present = {k: v for k, v in values.items() if v is not None}
    if bool(torch.stack([torch.isfinite(v).all() for v in present.values()]).all()):
        return
    for name, value in present.items():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            where = ""
            if value.dim() == 1 and value.numel() > 1:
                idx = bad.nonzero().flatten()[:5].tolist()
                where = f" ({int(bad.sum())} of {value.numel()} values, e.g. positions {idx})"
            raise NonFiniteError(
                f"non-finite {name.replace('_', ' ')} at step {step}{where}; nothing was "
                "updated. Lower the learning rate, clip gradients or check the inputs for NaN/Inf"
            )


def gradient_norms(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """The norm of each gradient ``optimizer`` is about to apply, for
    :func:`raise_if_not_finite` (a NaN or Inf anywhere in a gradient makes its norm
    non-finite); None when it holds no gradient."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    grads = [g for g in grads if g is not None]
    if not grads:
        return None
    return torch.stack([norm.float() for norm in torch._foreach_norm(grads)])


@contextmanager
def step_guard(
    model: nn.Module,
    *,
    modules: Sequence[nn.Module] = (),
    optimizers: Sequence[torch.optim.Optimizer | None] = (),
    enabled: bool = True,
) -> Iterator[None]:
    """Run one training step; if it raises, put back everything the step changed before
    its checks: every buffer of ``model`` (BatchNorm running statistics and
    ``num_batches_tracked`` move in the real forward, before the loss is checked), and the
    whole state of ``modules`` and ``optimizers`` (a weighting net updated before the real
    update's gradient was found non-finite).

    The model's parameters and its optimizer are not saved: a step only changes them in
    its last action, ``optimizer.step()``, after every check. So "nothing was updated"
    holds for the whole step, and the model computes exactly what it computed before.
    Saving costs a copy of the buffers per step (small next to the activations), and a
    copy of the (tiny) weighting net and its optimizer on steps that update it.
    """
    if not enabled:
        yield
        return
    buffers = {name: (b, b.clone()) for name, b in model.named_buffers()}
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    saved_optimizers = [
        (opt, _copy_state_dict(opt.state_dict())) for opt in optimizers if opt is not None
    ]
    try:
        yield
    except Exception:
        with torch.no_grad():
            _restore_buffers(model, buffers)
            for module, state in zip(modules, states, strict=True):
                module.load_state_dict(state)
        for opt, state in saved_optimizers:
            opt.load_state_dict(state)
        raise


def _copy_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict()`` with its tensors cloned: what ``copy.deepcopy`` gives,
    without deepcopy's per-tensor Python work (a tenth of a small model's step)."""
    return {
        "state": {
            key: {n: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for n, v in s.items()}
            for key, s in state["state"].items()
        },
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


def _restore_buffers(model: nn.Module, saved: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy the saved values back into the original tensors, and set those back on their
    modules (a forward may have replaced a buffer instead of updating it in place)."""
    for name, (original, value) in saved.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        original.copy_(value)
        owner._buffers[attr] = original
