"""Gradients of the meta loss with respect to the weighting network's parameters Θ.

Both functions compute the same quantity, ∂L_meta(θ̂(Θ))/∂Θ, where
θ̂ = a − s · ∇_θ [Σ_i c_i(Θ) L_i(θ) + B(θ)] is the virtual step, c_i the normalised weights
and B an optional part of the objective that no weight multiplies (see
:mod:`mwnet.core.objective`; it moves θ̂ but has no derivative in Θ of its own):

* :func:`reverse_hypergradient` differentiates through the virtual step with
  ``create_graph=True`` -- what the authors do, and the reference.
* :func:`fast_hypergradient` uses ∂L_meta/∂c_i = ⟨∇_θ̂ L_meta, −s ∇_θ L_i⟩, i.e. one
  forward-mode Jacobian-vector product of the per-sample loss vector at θ in the
  direction −s·∇_θ̂ L_meta, followed by a backward through the tiny weighting network.
  No second-order reverse pass is built.

With a :class:`~mwnet.core.reducer.GradientReducer` in the problem (data parallelism),
each rank holds a shard of the training batch and an equal shard of the meta batch, and
both functions return the global gradient on every rank: the virtual-step gradient is
summed over ranks (every c_i is already normalised globally), the meta loss is the mean of
the ranks' shard means, and the weighting net's gradient is summed over ranks, since each
rank differentiates through its own samples' weights only. The single-process code path
is unchanged.

The ``head`` mode (:mod:`mwnet.core.head`) is not a third way to compute this quantity
but the same quantity for a smaller problem: only the final linear layer takes the
virtual step. Its problem lives in head space, where :func:`reverse_hypergradient` is
tiny, so it uses that (exact for the restricted problem, any twice-differentiable loss).
The ``partial`` mode (:mod:`mwnet.core.partial`) restricts the virtual step to a top part
of the model and runs :func:`fast_hypergradient` on that problem. The ``famus`` mode
(:mod:`mwnet.core.famus`) keeps the whole virtual step but lets only some layers carry the
meta gradient back to the weights: :func:`fast_hypergradient` with
:attr:`MetaProblem.meta_indices` set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as fwad

from mwnet.core.reducer import GradientReducer
from mwnet.core.virtual_step import AffineStep

HypergradMode = Literal["reverse", "fast", "head", "partial", "famus"]
LossesJvp = Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor | None]
HYPERGRAD_MODES: tuple[str, ...] = ("reverse", "fast")
"""The exact modes: ∂L_meta/∂Θ with every trainable parameter in the virtual step."""
HEAD_MODE = "head"
PARTIAL_MODE = "partial"
FAMUS_MODE = "famus"
REWEIGHTER_MODES: tuple[str, ...] = (*HYPERGRAD_MODES, HEAD_MODE, PARTIAL_MODE, FAMUS_MODE)
"""What :class:`mwnet.MetaReweighter` accepts: the exact modes, the restricted ones (the
head alone, a top part of the model) and the layer-wise approximation (a few layers)."""


@dataclass
class MetaProblem:
    """Everything one hypergradient needs, gathered by the reweighter."""

    names: list[str]
    """Names (as in ``model.named_parameters()``) of the parameters the virtual step moves."""
    params: list[torch.Tensor]
    losses: torch.Tensor
    """Per-sample training losses at θ, still attached to the first forward's graph."""
    coefficients: torch.Tensor
    """Normalised per-sample weights c(Θ), attached to the weighting network's graph."""
    step: AffineStep
    meta_loss_at: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    """Mean meta loss of the model run with the given parameters (real buffers untouched)."""
    losses_at: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    """Replays the first forward (same dropout draws, real buffers untouched)."""
    weight_params: list[torch.Tensor]
    unweighted_mean: torch.Tensor | None = None
    """B(θ): the objective's unweighted part at θ, attached to the first forward's graph
    (under data parallelism this rank's share of the global mean); None when there is none."""
    reducer: GradientReducer | None = None
    """Set under data parallelism: the losses and coefficients are this rank's shard,
    the coefficients normalised over the global batch, and ``meta_loss_at`` the mean over
    this rank's (equal) shard of the meta batch."""
    losses_jvp: LossesJvp | None = None
    """Optional: per-sample ⟨∇_θ L_i, t⟩ from (θ, t) in one call (a compiled forward-mode
    pass); None runs forward-mode AD through ``losses_at``."""
    meta_indices: list[int] | None = None
    """Positions (in ``params``) of the parameters whose terms of the meta gradient are
    kept (``famus``'s layers, ascending); None keeps every one. ``fast`` only."""
    meta_scale: float = 1.0
    """The factor the kept terms are multiplied by (``famus`` with ``rescale``)."""
    keep_graph: bool = True
    """Whether the training forward's graph must survive the hypergradient (the real update
    reuses it). ``fast`` frees it with its first-order backward when False; ``reverse``
    always keeps it (the second-order pass runs through it)."""


def _grads_or_zeros(
    grads: tuple[torch.Tensor | None, ...], like: list[torch.Tensor]
) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like, strict=True)]


def _objective(problem: MetaProblem) -> torch.Tensor:
    """Σ_i c_i L_i + B: this rank's part of the objective the virtual step descends."""
    weighted = torch.dot(problem.coefficients, problem.losses)
    return weighted if problem.unweighted_mean is None else weighted + problem.unweighted_mean


def reverse_hypergradient(problem: MetaProblem) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Second-order reverse mode through the virtual step (the reference)."""
    if problem.reducer is not None:
        return _reverse_data_parallel(problem, problem.reducer)
    weighted = _objective(problem)
    grads = torch.autograd.grad(
        weighted, problem.params, create_graph=True, retain_graph=True, allow_unused=True
    )
    theta_hat = problem.step.apply(_grads_or_zeros(grads, problem.params))
    meta_loss = problem.meta_loss_at(dict(zip(problem.names, theta_hat, strict=True)))
    hyper = torch.autograd.grad(meta_loss, problem.weight_params, allow_unused=True)
    return _grads_or_zeros(hyper, problem.weight_params), meta_loss.detach()


def _reverse_data_parallel(
    problem: MetaProblem, reducer: GradientReducer
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """:func:`reverse_hypergradient` with the batches split over ranks.

    The virtual-step gradient is a differentiable sum over ranks, so backpropagating this
    rank's share of the meta loss (its shard mean / world size) through it delivers the
    meta gradient of the whole meta batch to every rank's own samples; the weighting net's
    gradients, each from one rank's samples, are then summed.
    """
    weighted = _objective(problem)
    grads = torch.autograd.grad(
        weighted, problem.params, create_graph=True, retain_graph=True, allow_unused=True
    )
    grads = reducer.sum_differentiable(
        _grads_or_zeros(grads, problem.params), "virtual_grad", "meta_grad"
    )
    theta_hat = problem.step.apply(grads)
    meta_loss = problem.meta_loss_at(dict(zip(problem.names, theta_hat, strict=True)))
    share = meta_loss / reducer.world_size
    hyper = torch.autograd.grad(share, problem.weight_params, allow_unused=True)
    *hyper, meta_loss = reducer.sum(
        [*_grads_or_zeros(hyper, problem.weight_params), share.detach()], "weight_net_grad"
    )
    return hyper, meta_loss


def fast_hypergradient(problem: MetaProblem) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The same gradient from first-order passes and one forward-mode JVP.

    With :attr:`MetaProblem.meta_indices` only those parameters' terms are summed: the
    meta backward asks for their gradients alone (so it stops at the lowest of them) and
    the JVP's tangent is zero elsewhere (so the forward-mode work starts there too).
    """
    reducer = problem.reducer
    coefficients = problem.coefficients.detach()
    outputs, seeds = [problem.losses], [coefficients]
    if problem.unweighted_mean is not None:
        outputs.append(problem.unweighted_mean)
        seeds.append(torch.ones_like(problem.unweighted_mean))
    grads = torch.autograd.grad(
        outputs,
        problem.params,
        seeds,
        retain_graph=problem.keep_graph,
        allow_unused=True,
    )
    grads = _grads_or_zeros(grads, problem.params)
    if reducer is not None:
        grads = reducer.sum(grads, "virtual_grad")
    with torch.no_grad():
        theta_hat = problem.step.apply(grads)
    kept = problem.meta_indices
    kept = list(range(len(theta_hat))) if kept is None else kept
    moving = [theta_hat[i].requires_grad_() for i in kept]
    meta_loss = problem.meta_loss_at(dict(zip(problem.names, theta_hat, strict=True)))
    meta_grads = _grads_or_zeros(torch.autograd.grad(meta_loss, moving, allow_unused=True), moving)
    if reducer is not None:  # the mean over the global meta batch: equal shards
        shares = torch._foreach_div([*meta_grads, meta_loss.detach()], reducer.world_size)
        *meta_grads, meta_loss = reducer.sum(shares, "meta_grad")
    scales = problem.step.scales
    tangents: list[torch.Tensor | None] = [None] * len(theta_hat)
    for i, t in zip(kept, torch._foreach_mul(meta_grads, [-scales[i] for i in kept]), strict=True):
        tangents[i] = t
    dmeta_dc = _loss_jvp(problem, tangents)
    if problem.meta_scale != 1.0:
        dmeta_dc = dmeta_dc * problem.meta_scale
    hyper = torch.autograd.grad(
        problem.coefficients, problem.weight_params, dmeta_dc, allow_unused=True
    )
    hyper = _grads_or_zeros(hyper, problem.weight_params)
    if reducer is not None:  # each rank differentiated through its own samples' weights
        hyper = reducer.sum(hyper, "weight_net_grad")
    return hyper, meta_loss.detach()


def _loss_jvp(problem: MetaProblem, tangents: list[torch.Tensor | None]) -> torch.Tensor:
    """Per-sample ⟨∇_θ L_i, t⟩ by forward-mode AD at θ; a None tangent is zero (that
    parameter enters as a plain tensor, so ops that see no other tangent do no tangent work)."""
    try:
        if problem.losses_jvp is not None:
            dense = [
                torch.zeros_like(p) if t is None else t
                for p, t in zip(problem.params, tangents, strict=True)
            ]
            tangent = problem.losses_jvp([p.detach() for p in problem.params], dense)
        else:
            with fwad.dual_level():
                duals = {
                    name: p.detach() if t is None else fwad.make_dual(p.detach(), t)
                    for name, p, t in zip(problem.names, problem.params, tangents, strict=True)
                }
                tangent = fwad.unpack_dual(problem.losses_at(duals)).tangent
    except (NotImplementedError, RuntimeError) as err:
        if "forward" not in str(err).lower() and "jvp" not in str(err).lower():
            raise
        raise NotImplementedError(
            f"hypergrad='fast' needs forward-mode AD through the model, which failed: {err}. "
            "Use hypergrad='reverse' for this model (same gradient, slower)."
        ) from err
    if tangent is None:  # the losses do not depend on the moved parameters at all
        return torch.zeros_like(problem.losses)
    return tangent


HYPERGRADIENTS: dict[str, Callable[[MetaProblem], tuple[list[torch.Tensor], torch.Tensor]]] = {
    "reverse": reverse_hypergradient,
    "fast": fast_hypergradient,
    HEAD_MODE: reverse_hypergradient,
    PARTIAL_MODE: fast_hypergradient,
    FAMUS_MODE: fast_hypergradient,
}
