"""Bounds for comparing floats that hold on any CPU, each with its reason.

Two computations of one quantity that differ only in the order of their floating-point
operations (a sum split over ranks, a fused or compiled kernel, another blocking of a
matrix product) agree up to rounding. How far rounding carries depends on the CPU's
kernels (blocking, vector width, FMA, thread count) and on how strongly the computation
amplifies it: a few optimizer steps, or Adam dividing a gradient by its own small size,
turn a last-bit difference into 1e-11. A tolerance picked on one CPU is therefore a guess
about another. The bounds here are of two kinds:

* **derived** (:func:`sum_bound`): two orders of an n-term sum each lie within
  γ_n·Σ|terms| of the exact sum, γ_n = n·u / (1 − n·u) with u the unit roundoff (Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §4.2), so they differ by at
  most 2·γ_n·Σ|terms|;
* **measured** (:func:`assert_within_order_noise`): the reference computation is run again
  with nothing changed but the order of its samples, which in exact arithmetic changes
  nothing. How far that moves the result is the rounding noise of *this* computation on
  *this* CPU, amplification included. The computation under test is one more reordering
  of the same sums, so it lands within the same noise; a bug (a term dropped, a wrong
  normaliser, a missed all-reduce) moves the result by many orders of magnitude more, and
  :data:`MAX_RELATIVE_NOISE` keeps a reference that is itself unstable from widening the
  bound until it means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

ORDER_FACTOR = 10.0
"""How much farther than the farthest of the measured reorderings another order may land.
Measured on the two-rank cases (AMD EPYC, 4 reorderings): the ranks' distance was 0.1 to
1.5 times the reorderings' greatest, so 10 leaves room for the draw without admitting a
bug, whose effect is 1e-3 relative and more."""

FLOOR_ULPS = 8
"""Differences below this many units in the last place of a tensor's largest entry are
rounding whatever the order (a reordering can also happen to move nothing)."""

MAX_RELATIVE_NOISE = 1e-6
"""The measured noise may be at most this fraction of the tensor's scale: beyond it the
reference is too unstable for an equality test to mean anything."""


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-p for a p-bit significand (float64: 2^-53, float32: 2^-24)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """γ_n = n·u / (1 − n·u), the relative error bound of an n-term floating-point sum."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"gamma_{n} is unbounded in {dtype}")
    return nu / (1 - nu)


def sum_bound(n: int, abs_sum: float | torch.Tensor, dtype: torch.dtype) -> float:
    """The most two evaluation orders of an n-term sum with Σ|terms| = ``abs_sum`` can
    differ by: each is within γ_n·Σ|terms| of the exact sum."""
    return 2 * gamma(n, dtype) * float(abs_sum)


def relative_sum_bound(n: int, dtype: torch.dtype) -> float:
    """2·γ_n: the most two evaluations of one quantity can differ *relative to its size*
    when it is a sum of n non-negative terms or a chain of n roundings (a product, a
    quotient, a correctly rounded exp or log counts one each): each lies within γ_n of the
    exact value (Higham, Lemma 3.1 and §4.2)."""
    return 2 * gamma(n, dtype)


def ulps(k: float, scale: float | torch.Tensor, dtype: torch.dtype) -> float:
    """``k`` units in the last place of a number of size ``scale``: the absolute tolerance
    for results that differ by a few roundings of terms no larger than ``scale``."""
    return k * 2 * unit_roundoff(dtype) * float(scale)


def central_difference_error(
    h: float, value_scale: float, third_derivative: float, dtype: torch.dtype, ops: int = 1000
) -> float:
    """The most a central difference (f(x+h) − f(x−h)) / 2h can miss f'(x) by: the
    truncation h²·|f'''| / 6, plus rounding: each f computed within γ_ops·|f| in ``ops``
    roundings, and their difference divided by 2h, so γ_ops·|f| / h."""
    return h * h * third_derivative / 6 + gamma(ops, dtype) * value_scale / h


def floor(reference: torch.Tensor) -> float:
    """:data:`FLOOR_ULPS` units in the last place of ``reference``'s largest entry."""
    if not reference.is_floating_point() or reference.numel() == 0:
        return 0.0
    scale = reference.detach().abs().max().item()
    return FLOOR_ULPS * 2 * unit_roundoff(reference.dtype) * scale


def order_noise(reference: torch.Tensor, reorderings: Sequence[torch.Tensor]) -> float:
    """The farthest any reordering of the reference computation landed from it."""
    if not reorderings:
        raise ValueError("order_noise needs at least one reordered run")
    return max((r.detach() - reference.detach()).abs().max().item() for r in reorderings)


def assert_within_order_noise(
    actual: torch.Tensor,
    reference: torch.Tensor,
    reorderings: Sequence[torch.Tensor],
    what: str = "",
) -> None:
    """``actual`` is ``reference`` up to a change of the order of its sums: within
    :data:`ORDER_FACTOR` times the measured :func:`order_noise`, or :func:`floor`.

    Raises AssertionError naming the distance and the bound, and also when the measured
    noise exceeds :data:`MAX_RELATIVE_NOISE` of the reference's scale.
    """
    noise = order_noise(reference, reorderings)
    scale = reference.detach().abs().max().item() if reference.numel() else 0.0
    assert noise <= MAX_RELATIVE_NOISE * max(scale, 1.0), (
        f"{what}: reordering the samples alone moves the reference by {noise:.3g} "
        f"(scale {scale:.3g}): too unstable to compare"
    )
    bound = max(ORDER_FACTOR * noise, floor(reference))
    distance = (actual.detach() - reference.detach()).abs().max().item()
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    assert distance <= bound, (
        f"{what}: {distance:.3g} from the reference, more than rounding explains "
        f"({ORDER_FACTOR:g} x the {noise:.3g} that reordering the samples moves it, "
        f"or {FLOOR_ULPS} ulps)"
    )


def assert_states_within_order_noise(
    actual: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    reorderings: Sequence[Mapping[str, torch.Tensor]],
    what: str = "",
) -> None:
    """:func:`assert_within_order_noise` for every tensor of a state dict."""
    assert actual.keys() == reference.keys(), f"{what}: {sorted(actual)} != {sorted(reference)}"
    for name, value in reference.items():
        assert_within_order_noise(
            actual[name], value, [r[name] for r in reorderings], f"{what}{name}"
        )


def assert_close_or_within_spread(
    actual: torch.Tensor,
    reference: torch.Tensor,
    reruns: Sequence[torch.Tensor],
    rtol: float,
    atol: float,
    what: str = "",
) -> None:
    """``actual`` is within ``atol + rtol·|reference|`` of ``reference``, that bound widened
    to :data:`ORDER_FACTOR` times the spread of ``reruns``: the reference computation run
    again with nothing changed but the order of its sums (another thread count, another
    blocking). Rounding that a CPU's kernels carry farther than the literal allows moves
    the reruns as far as it moves ``actual``, so the bound follows it there; a spread beyond
    ``rtol`` of the reference's scale means the run is too unstable to compare at all.
    """
    actual, reference = actual.detach().double(), reference.detach().double()
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    missing = reference.isnan()  # nothing recorded: must be so on both sides
    assert torch.equal(actual.isnan(), missing), f"{what}: NaN at other entries"
    actual, reference = actual[~missing], reference[~missing]
    reruns = [r.detach().double()[~missing] for r in reruns]
    if reference.numel() == 0:
        return
    spread = max(((r - reference).abs().max().item() for r in reruns), default=0.0)
    scale = reference.abs().max().item()
    assert spread <= rtol * scale + atol, (
        f"{what}: rerunning the reference with only the order of its sums changed moves it "
        f"by {spread:.3g} (scale {scale:.3g}): too unstable to compare"
    )
    bound = torch.clamp(atol + rtol * reference.abs(), min=ORDER_FACTOR * spread)
    excess = ((actual - reference).abs() - bound).max().item()
    distance = (actual - reference).abs().max().item()
    assert excess <= 0, (
        f"{what}: {distance:.3g} from the reference, more than rounding explains "
        f"(atol {atol:g} + rtol {rtol:g}, or {ORDER_FACTOR:g} x the {spread:.3g} that "
        "reordering its sums moves it)"
    )
