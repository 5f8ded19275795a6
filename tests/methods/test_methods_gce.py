"""Generalized cross-entropy: L_q and its truncated form, against the paper's formulas."""

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
    resumed_step_is_identical,
)

from mwnet.methods.gce import GceOptions


def reference_gce(logits: torch.Tensor, y: torch.Tensor, q: float, k: float | None = None):
    """Zhang & Sabuncu: L_q = (1 − p_y^q)/q from the softmax probability itself; truncated,
    a sample with p_y ≤ k takes (1 − k^q)/q."""
    p = F.softmax(logits, dim=1)[torch.arange(len(y)), y]
    lq = (1 - p**q) / q
    if k is not None:
        lq = torch.where(p > k, lq, torch.full_like(lq, (1 - k**q) / q))
    return lq.mean()


def _gce(q=0.7, truncated=False, k=0.5, truncate_from=None, epochs=3):
    model = model64()
    options = {"gce": {"q": q, "truncated": truncated, "k": k, "truncate_from": truncate_from}}
    return model, *build64("gce", model, {**options, "epochs": epochs})


@pytest.mark.parametrize("q", [0.7, 0.3, 1.0])
def test_lq_equals_the_paper_and_its_gradient_is_exact(q):
    _, _, method = _gce(q=q)
    logits, y = fixed_logits()
    loss = objective_of(method)
    # float64, the same function two ways (expm1 of q·CE, 1 − p^q): a few roundings of
    # terms below 1/q, ~1e-15; 1e-12 leaves room, and q off by 0.01 moves it by 1e-3
    torch.testing.assert_close(loss(logits, y), reference_gce(logits, y, q), rtol=1e-12, atol=0)
    assert gradient_is_exact(lambda z: loss(z, y), logits)


def test_truncated_lq_equals_the_paper_and_its_gradient_is_exact():
    _, _, method = _gce(q=0.7, truncated=True, k=0.3, truncate_from=0)
    logits, y = fixed_logits()
    loss = objective_of(method)
    p = F.softmax(logits, dim=1)[torch.arange(len(y)), y]
    assert bool((p <= 0.3).any()) and bool((p > 0.3).any())  # both branches taken
    assert float((p - 0.3).abs().min()) > 1e-3  # no sample at the edge of the mask
    want = reference_gce(logits, y, 0.7, k=0.3)
    torch.testing.assert_close(loss(logits, y), want, rtol=1e-12, atol=0)
    assert gradient_is_exact(lambda z: loss(z, y), logits)
    _, weights = method.objective(logits, F.cross_entropy(logits, y, reduction="none"), y)
    assert torch.equal(weights, (p > 0.3).double())


def test_a_hand_computed_case():
    # q = 0.5. Sample 0: logits (0, 0), label 0: p = 1/2, L = 2(1 − √0.5) = 0.585786437627.
    # Sample 1: logits (ln 3, 0), label 0: p = 3/4, L = 2(1 − √0.75) = 0.267949192431.
    # Mean 0.426867815029. Truncated at k = 0.6: sample 0 (p = 0.5 ≤ 0.6) takes
    # 2(1 − √0.6) = 0.450806661517, sample 1 keeps its L; mean 0.359377926974.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    _, _, plain = _gce(q=0.5)
    _, _, truncated = _gce(q=0.5, truncated=True, k=0.6, truncate_from=0)
    # a dozen float64 roundings of numbers below 1: within 1e-15; the figures have 12 digits
    want = torch.tensor(0.426867815029, dtype=torch.float64)
    torch.testing.assert_close(plain.objective(logits, ce, y)[0], want, rtol=0, atol=1e-12)
    loss, weights = truncated.objective(logits, ce, y)
    want = torch.tensor(0.359377926974, dtype=torch.float64)
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-12)
    assert weights.tolist() == [0.0, 1.0]


def test_planted_bugs_give_other_values():
    logits, y = fixed_logits()
    _, _, method = _gce(q=0.7, truncated=True, k=0.3, truncate_from=0)
    ce = F.cross_entropy(logits, y, reduction="none")
    loss, kept = method.objective(logits, ce, y)
    lq = (1 - torch.exp(-ce) ** 0.7) / 0.7
    floor = (1 - 0.3**0.7) / 0.7
    # the reference code's value: every term shifted by L_q(k), masked samples at 0 — the
    # same gradient, a value lower by exactly L_q(k) = 0.823...
    shifted = (kept * (lq - floor)).mean()
    torch.testing.assert_close(loss - shifted, torch.tensor(floor, dtype=torch.float64))
    # L_q without the 1/q, or CE itself: other values
    assert abs(float(loss - (kept * lq * 0.7 + (1 - kept) * floor * 0.7).mean())) > 1e-2
    assert abs(float(loss - ce.mean())) > 1e-2


def test_truncating_from_the_start_would_learn_nothing():
    """Why truncation waits for ``truncate_from``: with near-uniform predictions every
    p_y ≈ 1/K ≤ k, every sample takes the constant and the gradient is exactly 0."""
    logits = 0.01 * torch.randn(
        6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    logits.requires_grad_(True)
    y = torch.arange(6) % 5
    _, _, method = _gce(truncated=True, k=0.5, truncate_from=0)
    loss = objective_of(method)(logits, y)
    (grad,) = torch.autograd.grad(loss, logits, allow_unused=True)
    assert grad is None or bool((grad == 0).all())
    _, _, untruncated = _gce()
    (grad,) = torch.autograd.grad(objective_of(untruncated)(logits, y), logits)
    assert float(grad.abs().max()) > 1e-3


def test_truncation_starts_at_its_epoch():
    _, _, method = _gce(truncated=True, k=0.3, epochs=9)  # default: 9 // 3 = epoch 3
    assert method.truncate_from == 3
    logits, y = fixed_logits()
    ce = F.cross_entropy(logits, y, reduction="none")
    method.begin_epoch(2)
    loss, weights = method.objective(logits, ce, y)
    assert torch.equal(weights, torch.ones(len(y), dtype=torch.float64))
    torch.testing.assert_close(loss, reference_gce(logits, y, 0.7), rtol=1e-12, atol=0)
    method.begin_epoch(3)
    loss, weights = method.objective(logits, ce, y)
    torch.testing.assert_close(loss, reference_gce(logits, y, 0.7, k=0.3), rtol=1e-12, atol=0)
    assert float(weights.sum()) < len(y)


@pytest.mark.parametrize("truncated", [False, True])
def test_one_step_through_the_registry(truncated):
    model, _, method = _gce(q=0.6, truncated=truncated, k=0.2, truncate_from=1)
    method.begin_epoch(1)
    x, y = batch64(0)

    def loss_of(logits, labels):
        return reference_gce(logits, labels, 0.6, k=0.2 if truncated else None)

    assert_step_matches(model, method, x, y, loss_of)
    with torch.no_grad():
        p = F.softmax(model64()(x), dim=1)[torch.arange(len(y)), y]
    if truncated:  # the case has both kinds of sample
        assert bool((p <= 0.2).any()) and bool((p > 0.2).any())


def test_the_step_check_catches_a_nearby_loss():
    """The one-step comparison discriminates: q = 0.62 instead of 0.6 fails it."""
    model, _, method = _gce(q=0.6)
    with pytest.raises(AssertionError):
        assert_step_matches(
            model, method, *batch64(0), lambda logits, y: reference_gce(logits, y, 0.62)
        )


def test_resume_continues_with_the_epoch():
    options = {"gce": {"truncated": True, "k": 0.2, "truncate_from": 2}, "epochs": 5}
    uninterrupted, resumed, forgot = resumed_step_is_identical(
        "gce", options, epoch=2, forget=lambda s: {**s, "epoch": 0}
    )
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k
    # with its epoch reset to 0 it would not truncate, and step elsewhere
    assert any(not torch.equal(forgot[k], v) for k, v in uninterrupted.items())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("q", 0.0, r"method.gce.q must lie in \(0, 1\]"),
        ("q", 1.5, r"method.gce.q must lie in \(0, 1\]"),
        ("k", 1.0, r"method.gce.k must lie in \(0, 1\)"),
        ("truncate_from", -1, "method.gce.truncate_from must be an epoch number"),
    ],
)
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GceOptions(**{field: value})


def test_truncation_needs_the_run_length_or_its_epoch():
    model = model64()
    with pytest.raises(ValueError, match=r"or set method\.gce\.truncate_from"):
        build64("gce", model, {"gce": {"truncated": True}})
    build64("gce", model, {"gce": {"truncated": True, "truncate_from": 0}})  # fine
    build64("gce", model, {})  # untruncated needs no epochs
