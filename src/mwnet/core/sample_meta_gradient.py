"""Each training sample's meta gradient, L2RW's signal (Ren et al., 2018).

How the meta loss would change if sample i's weight ε_i in a plain SGD step were raised
from 0:

    θ̂(ε) = θ − α ∇_θ Σ_i ε_i L_i(θ),   g_i = ∂L_meta(θ̂(ε))/∂ε_i at ε = 0
         = −α ⟨∇_θ L_meta(θ), ∇_θ L_i(θ)⟩          (θ̂ = θ at ε = 0),

with α each parameter's learning rate. A sample whose g_i < 0 is one whose gradient agrees
with the meta batch's: a step on it lowers the meta loss. L2RW weighs by max(−g_i, 0);
MW-Net's ``gate="meta-sign"`` keeps the weighting net's weight of the samples with
g_i < 0 only.

``fast``: one reverse pass for ∇_θ L_meta(θ) and one forward-mode JVP of the per-sample
losses in the direction −α ∇_θ L_meta. ``reverse``: differentiate the meta loss through
the virtual step with respect to ε, as Ren et al. do; the same numbers. Not the fast
hypergradient's per-sample derivative ∂L_meta(θ̂(c))/∂c_i, which is taken at the weighting
net's weights c (∇L_meta at the virtual step θ̂, not at θ): the two differ by the
curvature over one virtual step.

With a reducer the batches are split over ranks: the meta loss is the mean over the global
meta batch (equal shards), so each rank contributes its shard mean / world size; ``reverse``
differentiates through a virtual step whose gradient is summed over ranks; ``fast`` sums
the ranks' shares of the meta gradient before its JVP. Each rank gets its own samples'
g_i. In one process (world size 1, no sums) the arithmetic is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.autograd.forward_ad as fwad

from mwnet.core.reducer import GradientReducer

ScoreMode = Literal["fast", "reverse"]


def sample_meta_gradient(
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    lrs: Sequence[float],
    losses: torch.Tensor,
    meta_loss_at: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    losses_at: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    mode: ScoreMode,
    reducer: GradientReducer | None = None,
    who: str = "l2rw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """g (shape of ``losses``, detached) and this rank's share of L_meta(θ).

    Args:
        names, params, lrs: the parameters the virtual step moves, their names (as in
            ``named_parameters``) and learning rates α.
        losses: per-sample L_i(θ), attached to the training forward's graph (``reverse``
            differentiates through it; ``fast`` reads only its shape).
        meta_loss_at: the mean meta loss of the model run with the given parameters
            (``{}``: the model's own).
        losses_at: the training forward replayed with the given parameters (dual tensors
            in ``fast``), returning the per-sample losses.
        who: names the caller in the error of a model forward mode cannot run.
    """
    world = 1 if reducer is None else reducer.world_size
    params = list(params)
    if mode == "reverse":
        eps = torch.zeros_like(losses, requires_grad=True)
        grads = torch.autograd.grad(
            torch.dot(eps, losses),
            params,
            create_graph=True,
            retain_graph=True,
            allow_unused=True,
        )
        grads = _or_zeros(grads, params)
        if reducer is not None:
            grads = reducer.sum_differentiable(grads, "virtual_grad", "meta_grad")
        theta_hat = {n: p - lr * g for n, p, g, lr in zip(names, params, grads, lrs, strict=True)}
        share = meta_loss_at(theta_hat) / world
        (scores,) = torch.autograd.grad(share, eps, allow_unused=True)
        scores = torch.zeros_like(losses) if scores is None else scores
        return scores.detach(), share.detach()
    share = meta_loss_at({}) / world
    meta_grads = _or_zeros(torch.autograd.grad(share, params, allow_unused=True), params)
    if reducer is not None:
        meta_grads = reducer.sum(meta_grads, "meta_grad")
    duals = {n: (p, -lr * g) for n, p, g, lr in zip(names, params, meta_grads, lrs, strict=True)}
    scores = _losses_jvp(losses_at, duals, who)
    return (torch.zeros_like(losses) if scores is None else scores.detach()), share.detach()


def _or_zeros(
    grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _losses_jvp(
    losses_at: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    directions: dict[str, tuple[torch.Tensor, torch.Tensor]],
    who: str,
) -> torch.Tensor | None:
    """Per-sample ⟨∇_θ L_i, t⟩ for ``directions[name] = (θ_name, t_name)``."""
    try:
        with fwad.dual_level():
            duals = {n: fwad.make_dual(p.detach(), t) for n, (p, t) in directions.items()}
            return fwad.unpack_dual(losses_at(duals)).tangent
    except (NotImplementedError, RuntimeError) as err:
        if "forward" not in str(err).lower() and "jvp" not in str(err).lower():
            raise
        raise NotImplementedError(
            f"{who} with hypergrad='fast' needs forward-mode AD through the model, which "
            f"failed: {err}. Use hypergrad='reverse' for this model (same weights, slower)."
        ) from err
