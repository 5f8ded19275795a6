"""Input and numerical checks whose error messages name the problem and the fix."""

from __future__ import annotations

import torch


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
            raise FloatingPointError(
                f"non-finite {name.replace('_', ' ')} at step {step}{where}; nothing was "
                "updated. Lower the learning rate, clip gradients or check the inputs for NaN/Inf"
            )
