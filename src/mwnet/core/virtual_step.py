"""The virtual step θ̂ = θ − α·D(g) written in the one form both hypergradients need.

Every supported virtual step is affine in the weighted-loss gradient g:

    θ̂_p = a_p − s_p · g_p

where the offset ``a_p`` (parameter, weight decay, momentum buffer) and the scalar
``s_p`` (learning rate times the optimizer's gradient multiplier) do not depend on
the weighting network. The reverse hypergradient differentiates through
``a − s·g`` directly; the fast one only needs ``s`` to turn the meta gradient into a
JVP direction. Keeping the two in one place keeps them in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

VirtualStepKind = Literal["sgd", "optimizer"]
VIRTUAL_STEP_KINDS: tuple[str, ...] = ("sgd", "optimizer")


@dataclass(frozen=True)
class AffineStep:
    """``θ̂_p = offsets[p] − scales[p] · g_p`` for each trainable parameter ``p``."""

    offsets: list[torch.Tensor]
    scales: list[float]

    def apply(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return θ̂ for the gradients ``grads``; differentiable if ``grads`` are.

        Multi-tensor (``torch._foreach_*``) ops: one call for all parameters instead of two
        per parameter, which matters on a GPU (one launch per op, not per tensor) and costs
        nothing on a CPU. Always out of place: gradients from ``torch.autograd.grad`` may
        share storage (``a + b`` hands both the same tensor), so writing into them is unsafe.
        """
        if len(grads) != len(self.offsets):
            raise ValueError(f"{len(grads)} gradients for {len(self.offsets)} parameters")
        if not grads:
            return []
        if len(set(self.scales)) == 1:
            return list(torch._foreach_sub(self.offsets, grads, alpha=self.scales[0]))
        return list(torch._foreach_sub(self.offsets, torch._foreach_mul(grads, self.scales)))


def check_virtual_step(kind: str, optimizer: torch.optim.Optimizer) -> None:
    """Reject a virtual-step kind the optimizer cannot support, naming the fix."""
    if kind not in VIRTUAL_STEP_KINDS:
        raise ValueError(f"virtual_step must be one of {VIRTUAL_STEP_KINDS}, got {kind!r}")
    if kind == "optimizer" and not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            "virtual_step='optimizer' mirrors torch.optim.SGD (momentum, Nesterov, weight "
            f"decay) but the optimizer is {type(optimizer).__name__}; use virtual_step='sgd' "
            "(the paper's plain SGD step at the optimizer's current learning rate)"
        )


def affine_step(
    kind: VirtualStepKind,
    params: list[torch.Tensor],
    groups: list[dict],
    optimizer: torch.optim.Optimizer,
) -> AffineStep:
    """The affine virtual step for ``params``; ``groups[i]`` is the param group of ``params[i]``.

    ``"sgd"`` is the paper's step, plain SGD at each group's current lr. ``"optimizer"``
    reproduces one step of ``torch.optim.SGD`` from its current state, read but never
    written: weight decay and the momentum buffer enter the offset, and the gradient's
    multiplier is 1, (1 + μ) on Nesterov's first step, 1 + μ(1 − dampening) afterwards
    (or 1 − dampening without Nesterov).
    """
    with torch.no_grad():
        if kind == "sgd":
            return AffineStep([p.detach() for p in params], [float(g["lr"]) for g in groups])
        offsets = [p.detach() for p in params]
        scales, decayed, decay_coef, moved, buf_coef, bufs = [], [], [], [], [], []
        for i, (p, group) in enumerate(zip(params, groups, strict=True)):
            lr, mu = float(group["lr"]), float(group["momentum"])
            decay, damp = float(group["weight_decay"]), float(group["dampening"])
            sign = -1.0 if group.get("maximize", False) else 1.0
            buf = optimizer.state.get(p, {}).get("momentum_buffer") if mu != 0 else None
            if mu == 0:
                grad_mult, buf_mult = 1.0, 0.0
            elif buf is None:
                grad_mult, buf_mult = (1.0 + mu if group["nesterov"] else 1.0), 0.0
            elif group["nesterov"]:
                grad_mult, buf_mult = 1.0 + mu * (1.0 - damp), mu * mu
            else:
                grad_mult, buf_mult = 1.0 - damp, mu
            if decay != 0:
                decayed.append(i)
                decay_coef.append(lr * grad_mult * decay)
            if buf_mult != 0:
                moved.append(i)
                buf_coef.append(lr * buf_mult)
                bufs.append(buf)
            scales.append(lr * grad_mult * sign)
        # offset = p − (lr·m·decay)·p − (lr·m_buf)·buf, as multi-tensor ops over the
        # parameters that have each term (the same arithmetic, term by term, as a loop).
        if decayed:
            ps = [offsets[i] for i in decayed]
            _place(offsets, decayed, torch._foreach_sub(ps, torch._foreach_mul(ps, decay_coef)))
        if moved:
            current = [offsets[i] for i in moved]
            _place(offsets, moved, torch._foreach_sub(current, torch._foreach_mul(bufs, buf_coef)))
        return AffineStep(offsets, scales)


def _place(target: list[torch.Tensor], indices: list[int], values: list[torch.Tensor]) -> None:
    for i, value in zip(indices, values, strict=True):
        target[i] = value
