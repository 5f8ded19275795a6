"""Symmetric cross-entropy: α·CE + β·RCE as the authors' code computes it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from plain_checks import (
    assert_step_matches,
    batch64,
    build64,
    fixed_logits,
    gradient_is_exact,
    model64,
    objective_of,
)

from mwnet.methods.sce import SceOptions


def reference_sce(logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, a=None):
    """Wang et al.: α·CE + β·RCE, RCE = −Σ_k p_k log q_k. The authors' code clamps p to
    [1e-7, 1] and the one-hot q to [1e-4, 1]: log q_y = 0 and log q_k = log 1e-4 = A
    elsewhere, so RCE = −A·Σ_{k≠y} max(p_k, 1e-7). Written per sample, per class."""
    a = math.log(1e-4) if a is None else a
    p = F.softmax(logits, dim=1)
    total = torch.zeros((), dtype=logits.dtype)
    for i in range(len(y)):
        ce = -torch.log(p[i, y[i]])
        rce = sum(-a * torch.clamp(p[i, k], min=1e-7) for k in range(p.shape[1]) if k != y[i])
        total = total + alpha * ce + beta * rce
    return total / len(y)


def _sce(alpha=0.1, beta=1.0):
    model = model64()
    return model, *build64("sce", model, {"sce": {"alpha": alpha, "beta": beta}})


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 1.0), (6.0, 0.1), (0.0, 1.0)])
def test_loss_equals_the_authors_and_its_gradient_is_exact(alpha, beta):
    _, _, method = _sce(alpha, beta)
    logits, y = fixed_logits()
    loss = objective_of(method)
    want = reference_sce(logits, y, alpha, beta)
    # float64: a softmax, a log and a 5-term sum per sample, in another order; a few dozen
    # roundings of terms below 10, ~1e-14; α off by 1% moves it by 1e-3 and more
    torch.testing.assert_close(loss(logits, y), want, rtol=1e-12, atol=0)
    assert gradient_is_exact(lambda z: loss(z, y), logits)


def test_probabilities_below_the_floor_are_clamped():
    # a class with logit −30 below the others has p ≈ 1e-13 < 1e-7: it counts as 1e-7
    logits = torch.tensor([[2.0, 0.0, -30.0]], dtype=torch.float64)
    y = torch.tensor([0])
    _, _, method = _sce(alpha=0.0, beta=1.0)
    loss = objective_of(method)(logits, y)
    p = F.softmax(logits, dim=1)[0]
    want = -math.log(1e-4) * (float(p[1]) + 1e-7)
    torch.testing.assert_close(loss, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_a_hand_computed_case():
    # Two classes, α = 0.1, β = 1. Sample 0: logits (0, 0), label 0: p = (1/2, 1/2),
    # CE = ln 2 = 0.693147180560, RCE = −ln(1e-4)·1/2 = 4.605170185988.
    # Sample 1: logits (ln 3, 0), label 1: p = (3/4, 1/4), CE = ln 4 = 1.386294361120,
    # RCE = −ln(1e-4)·3/4 = 6.907755278982.
    # Loss = 0.1·(0.693147180560 + 1.386294361120)/2 + (4.605170185988 + 6.907755278982)/2
    #      = 0.103972077084 + 5.756462732485 = 5.860434809569.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    _, _, method = _sce(0.1, 1.0)
    got = objective_of(method)(logits, y)
    # a dozen float64 roundings of numbers below 10: 1e-14; the figures carry 12 decimals
    want = torch.tensor(5.860434809569, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_planted_bugs_give_other_values():
    logits, y = fixed_logits()
    _, _, method = _sce(0.1, 1.0)
    got = objective_of(method)(logits, y)
    # the paper's A = −4 instead of the code's log 1e-4 = −9.21: RCE less than half
    assert abs(float(got - reference_sce(logits, y, 0.1, 1.0, a=-4.0))) > 1.0
    # no clamp of the one-hot label: log 0 = −inf, times p_k: −inf, the loss not finite
    p = F.softmax(logits, dim=1)
    unclamped = -(p * torch.log(F.one_hot(y, p.shape[1]).double())).sum(1)
    assert not bool(torch.isfinite(unclamped).all())
    # α and β swapped
    assert abs(float(got - reference_sce(logits, y, 1.0, 0.1))) > 1.0


def test_one_step_through_the_registry():
    model, _, method = _sce(0.5, 2.0)
    x, y = batch64(0)
    assert_step_matches(model, method, x, y, lambda z, t: reference_sce(z, t, 0.5, 2.0))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="must be >= 0 and not both 0"):
        SceOptions(alpha=0.0, beta=0.0)
    with pytest.raises(ValueError, match="must be >= 0 and not both 0"):
        SceOptions(alpha=-0.1)
