"""Weight normalisation and the real update over a batch split across ranks.

Each rank holds a contiguous shard of the global batch. Every quantity below is defined
on the *global* batch, so that W ranks with shards of n/W samples compute exactly what one
process computes on all n:

* normalised weights c_i = w_i / Σ_{all ranks} w_j (``"sum"``) or w_i / N_global
  (``"mean"``); the global sum is differentiable, so hypergradients see how each w_i
  moves every c_j;
* the real update's gradient Σ_{i in the global batch} c_i ∇L_i, a sum over ranks of each
  rank's own samples' contributions.

Shards may differ in size (the last batch of an epoch): counts are summed over ranks, never
assumed. The real update's normaliser travels in the same all-reduce as the gradients:
each rank backpropagates its unnormalised Σ_i w_i L_i and the summed gradient is divided
by the summed normaliser afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mwnet.core.reducer import GradientReducer


def global_coefficients(weights: torch.Tensor, mode: str, reducer: GradientReducer) -> torch.Tensor:
    """c_i of this rank's samples, normalised over the global batch (see the module doc).

    ``"sum"`` is differentiable through the sum over ranks and, like the single-process
    :func:`mwnet.core.normalize_weights`, leaves the weights at 0 if the global sum is 0.
    """
    if mode == "none":
        return weights
    if mode == "sum":
        (total,) = reducer.sum_differentiable([weights.sum()], "normaliser", "normaliser")
        return weights / torch.where(total == 0, torch.ones_like(total), total)
    if mode == "sum-detached":
        (total,) = reducer.sum([weights.detach().sum()], "normaliser")
        return weights / torch.where(total == 0, torch.ones_like(total), total)
    if mode == "mean":
        (count,) = reducer.sum([_count(weights)], "normaliser")
        return weights / count
    raise ValueError(
        f"normalize must be one of ('sum', 'sum-detached', 'mean', 'none'), got {mode!r}"
    )


def global_mean(values: torch.Tensor, reducer: GradientReducer) -> torch.Tensor:
    """This rank's share of the mean over the global batch: Σ_local v_i / N_global, still
    attached to the graph of ``values`` (summed over ranks, the gradients give the global
    mean's)."""
    (count,) = reducer.sum([_count(values)], "normaliser")
    return values.sum() / count


def weighted_backward(
    losses: torch.Tensor,
    weights: torch.Tensor,
    mode: str,
    optimizer: torch.optim.Optimizer,
    reducer: GradientReducer,
    extras: Sequence[torch.Tensor] = (),
    unweighted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Set ``.grad`` of ``optimizer``'s parameters to ∇ Σ_global c_i L_i on every rank
    (plus ∇ mean_global B_i when the objective has an ``unweighted`` part B).

    Args:
        losses: this rank's per-sample losses, attached to the model's graph.
        weights: this rank's raw weights w_i (no graph), normalised as ``mode`` says.
        extras: scalars to sum over ranks in the same all-reduce (for logging).
        unweighted: this rank's per-sample B_i (see :mod:`mwnet.core.objective`).

    Returns:
        This rank's coefficients c_i, the global objective Σ_global c_i L_i (+ mean B), and
        the sums of ``extras``.
    """
    if unweighted is not None:
        return _objective_backward(losses, weights, mode, optimizer, reducer, extras, unweighted)
    weights = weights.to(losses.dtype)
    local = torch.dot(weights, losses)
    parts = [weights.sum(), _count(weights), local.detach(), *(e.detach() for e in extras)]
    stats = torch.stack([t.to(losses.dtype) for t in parts])

    def divisor(summed: torch.Tensor) -> torch.Tensor:
        total, count = summed[0], summed[1]
        if mode in ("sum", "sum-detached"):  # the same values: no hypergradient here
            return torch.where(total == 0, torch.ones_like(total), total)
        if mode == "mean":
            return count
        return torch.ones_like(total)

    summed, denominator = _backward_and_sum(local, stats, optimizer, reducer, divisor)
    return weights / denominator, summed[2] / denominator, list(summed[3:].unbind())


def _objective_backward(
    losses: torch.Tensor,
    weights: torch.Tensor,
    mode: str,
    optimizer: torch.optim.Optimizer,
    reducer: GradientReducer,
    extras: Sequence[torch.Tensor],
    unweighted: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """:func:`weighted_backward` for Σ c_i L_i + mean B_i: the two parts have different
    normalisers, so both are summed over ranks first (one small all-reduce), and the
    gradients of this rank's exact share then simply add up over ranks."""
    with torch.no_grad():
        coefficients = global_coefficients(weights.to(losses.dtype), mode, reducer)
    local = torch.dot(coefficients, losses) + global_mean(unweighted, reducer)
    stats = torch.stack([local.detach(), *(e.detach().to(losses.dtype) for e in extras)])
    summed, _ = _backward_and_sum(local, stats, optimizer, reducer, lambda s: torch.ones_like(s[0]))
    return coefficients, summed[0], list(summed[1:].unbind())


def mean_backward(
    loss: torch.Tensor,
    count: int,
    optimizer: torch.optim.Optimizer,
    reducer: GradientReducer,
) -> torch.Tensor:
    """Set ``.grad`` to the gradient of the global-batch mean of a per-sample objective.

    ``loss`` is the mean of that objective over this rank's ``count`` samples; ranks with
    unequal shares are weighted by their counts. Returns the global mean (no graph).
    """
    local = loss * count
    stats = torch.stack([torch.full_like(local, count).detach(), local.detach()])
    summed, total = _backward_and_sum(local, stats, optimizer, reducer, lambda s: s[0])
    return summed[1] / total


def sum_backward(
    objective: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    reducer: GradientReducer,
    extras: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Set ``.grad`` to the gradient of the sum over ranks of each rank's ``objective``:
    for an objective whose ranks' parts are already normalised by global counts (each a
    share of a global mean), so that they simply add up. Returns the sums of
    ``[objective, *extras]`` (no graph)."""
    parts = [objective.detach(), *(e.detach().to(objective.dtype) for e in extras)]
    stats = torch.stack(parts)
    summed, _ = _backward_and_sum(
        objective, stats, optimizer, reducer, lambda s: torch.ones_like(s[0])
    )
    return summed


def _backward_and_sum(
    objective: torch.Tensor,
    stats: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    reducer: GradientReducer,
    divisor_of: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backpropagate this rank's ``objective``, sum the gradients and ``stats`` over ranks
    in one all-reduce, and leave the summed gradients divided by ``divisor_of(summed
    stats)`` in ``.grad``. Parameters without a gradient keep none (as in one process),
    which needs the same parameters to be used on every rank."""
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if params:
        stats = stats.to(params[0].grad.dtype)
    *grads, summed = reducer.sum([*(p.grad for p in params), stats], "real_grad")
    divisor = divisor_of(summed)
    if grads:
        torch._foreach_div_(grads, divisor.to(grads[0].dtype))
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    return summed, divisor


def _count(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(like.numel()), dtype=like.dtype, device=like.device)
