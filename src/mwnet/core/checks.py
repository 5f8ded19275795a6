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


def _names(which: str) -> tuple[str, str]:
    """How the arguments of ``MetaReweighter.step(x, y, x_meta, y_meta)`` (and of the
    methods' ``step(x, y)``) that hold the ``which`` batch are called."""
    return ("x_meta", "y_meta") if which == "meta" else ("x", "y")


def check_batch(x: torch.Tensor, y: torch.Tensor, which: str) -> None:
    """A batch must be non-empty, samples first, and hold one label per input."""
    xs, ys = _names(which)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        found = ", ".join(
            f"{name} is a {type(v).__name__}"
            for name, v in ((xs, x), (ys, y))
            if not isinstance(v, torch.Tensor)
        )
        raise TypeError(
            f"{which} batch: inputs and labels must be tensors ({found}); convert them, "
            "e.g. torch.as_tensor(...)"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{which} batch is empty (inputs of shape {tuple(x.shape)})")
    if x.dim() == 1 and x.is_floating_point():
        raise ValueError(
            f"{which} batch: {xs} has shape {tuple(x.shape)}, one number per sample, but a "
            f"batch holds the samples first and each sample's features after it: shape "
            f"(n, features) or (n, C, H, W); {xs}.unsqueeze(1) makes each number a feature"
        )
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{which} batch: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}; "
            "inputs and labels must have the same first dimension"
        )


def integer_labels(y: Any) -> Any:
    """Class labels of any integer dtype (int32, uint8, ...: what numpy and file readers
    give) as the int64 that torch's losses and indexing take; anything else as it is.
    (A uint8 tensor used as an index would even select by mask instead of by class.)"""
    if isinstance(y, torch.Tensor) and y.dtype in _OTHER_INTEGERS:
        return y.long()
    return y


_OTHER_INTEGERS = frozenset(
    {torch.int8, torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32, torch.uint64}
)


def check_class_labels(y: torch.Tensor, which: str) -> None:
    """Labels for cross-entropy on class indices: integers, one per sample, shape (n,).

    Float labels are refused rather than cast: a float label is usually a one-hot or
    soft target, which class-index cross-entropy does not take (torch would read each
    row as class probabilities, or fail), and a bool tensor is a mask passed by mistake.
    """
    ys = _names(which)[1]
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(
            f"{ys} ({which} labels) has dtype {y.dtype}, but the loss takes class indices: "
            f"pass integer labels (int64) of shape (n,), e.g. {ys}.long() for whole numbers "
            f"or {ys}.argmax(1) for one-hot rows (MetaReweighter: loss_fn= takes soft labels)"
        )
    if y.dim() != 1:
        raise ValueError(
            f"{ys} ({which} labels) has shape {tuple(y.shape)}, but class labels have shape "
            f"(n,), one class index per sample; e.g. {ys}.reshape(-1) for a column of labels"
        )


def check_logits(output: Any, n: int, which: str) -> None:
    """What the model returns must be the logits: a tensor of shape (n, classes)."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model returned a {type(output).__name__} for the {which} batch, but the loss "
            "takes the logits: a tensor of shape (n, classes). Make forward return the logits "
            "alone (e.g. a wrapper module whose forward returns model(x)[0]); "
            "MetaReweighter also takes loss_fn= and meta_loss_fn= that read what it returns"
        )
    if output.dim() != 2 or output.shape[0] != n:
        raise ValueError(
            f"the model returned logits of shape {tuple(output.shape)} for the {n} samples of "
            f"the {which} batch; the loss takes shape ({n}, classes): one row of class "
            "scores per sample"
        )


def check_same_samples(x: torch.Tensor, x_meta: torch.Tensor) -> None:
    """The meta batch must hold samples of the training batch's shape: the model (and
    the virtual step) run on both."""
    if tuple(x.shape[1:]) != tuple(x_meta.shape[1:]):
        raise ValueError(
            f"the meta batch's samples have shape {tuple(x_meta.shape[1:])} but the training "
            f"batch's {tuple(x.shape[1:])} (x_meta of shape {tuple(x_meta.shape)}, x of shape "
            f"{tuple(x.shape)}); both must be batches of the same kind of input"
        )


@contextmanager
def inputs_named(x: torch.Tensor, which: str) -> Iterator[None]:
    """Around the model's forward on a batch: a failure of the forward itself (a shape,
    dtype or device it cannot take) becomes a ValueError that names the argument and
    what it held, with torch's own message, instead of an error from deep inside a layer.
    Running out of memory is left as it is."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, torch.OutOfMemoryError) or not isinstance(x, torch.Tensor):
            raise
        xs = _names(which)[0]
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(
            f"the model cannot take {xs} ({which} inputs) of shape {tuple(x.shape)}, dtype "
            f"{x.dtype}, on {x.device}: {detail}. Pass a batch the model takes, samples first "
            f"(a CNN takes (n, C, H, W) floats: {xs}.unsqueeze(1) adds a missing channel, "
            f"{xs}.float() converts integers)"
        ) from err


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
