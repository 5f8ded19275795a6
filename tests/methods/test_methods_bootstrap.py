"""Hard and soft bootstrapping: the target β·t + (1−β)·(prediction), as Reed et al. write it."""

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

from mwnet.methods.bootstrap import BootstrapHardOptions, BootstrapSoftOptions


def reference_hard(logits: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """−Σ_k (β t_k + (1−β) z_k) log p_k, z the one-hot argmax of p (a constant)."""
    k = logits.shape[1]
    z = F.one_hot(logits.detach().argmax(dim=1), k).to(logits.dtype)
    target = beta * F.one_hot(y, k).to(logits.dtype) + (1 - beta) * z
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def reference_soft(logits: torch.Tensor, y: torch.Tensor, beta: float, detach=False):
    """−Σ_k (β t_k + (1−β) p_k) log p_k, p in the target differentiated (the paper's
    entropy-regularisation reading) unless ``detach``."""
    p = F.softmax(logits, dim=1)
    p = p.detach() if detach else p
    target = beta * F.one_hot(y, logits.shape[1]).to(logits.dtype) + (1 - beta) * p
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _build(name: str, beta: float):
    model = model64()
    group = name.replace("-", "_")
    return model, *build64(name, model, {group: {"beta": beta}})


# every sample's largest logit is clear of the next (no argmax tie within 1e-3)
def _clear_logits():
    logits, y = fixed_logits()
    top2 = logits.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-3
    return logits, y


@pytest.mark.parametrize("beta", [0.8, 0.5, 1.0])
def test_hard_equals_the_paper_and_its_gradient_is_exact(beta):
    _, _, method = _build("bootstrap-hard", beta)
    logits, y = _clear_logits()
    assert bool((logits.argmax(1) != y).any())  # some samples bootstrap to another class
    loss = objective_of(method)
    # float64: log-softmax and a 5-term sum per sample, another order: ~1e-15
    torch.testing.assert_close(loss(logits, y), reference_hard(logits, y, beta), rtol=1e-12, atol=0)
    # central differences step 1e-6 never move an argmax that leads by 1e-3
    assert gradient_is_exact(lambda z: loss(z, y), logits)


@pytest.mark.parametrize("beta", [0.95, 0.5])
def test_soft_equals_the_paper_and_its_gradient_is_exact(beta):
    _, _, method = _build("bootstrap-soft", beta)
    logits, y = fixed_logits()
    loss = objective_of(method)
    torch.testing.assert_close(loss(logits, y), reference_soft(logits, y, beta), rtol=1e-12, atol=0)
    assert gradient_is_exact(lambda z: loss(z, y), logits)


def test_a_hand_computed_case():
    # Two classes. Sample 0: logits (ln 3, 0), label 1, so p = (3/4, 1/4), argmax 0.
    # Hard, β = 0.8: −(0.8·ln(1/4) + 0.2·ln(3/4)) = 0.8·1.386294361120 + 0.2·0.287682072452
    #   = 1.109035488896 + 0.057536414490 = 1.166571903386.
    # Sample 1: logits (0, ln 3), label 1: p = (1/4, 3/4), argmax = label: CE = 0.287682072452.
    # Hard mean: (1.166571903386 + 0.287682072452)/2 = 0.727126987919.
    # Soft, β = 0.95: β·CE + 0.05·H, H = −(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335144618 for
    # both samples: sample 0: 0.95·1.386294361120 + 0.05·0.562335144618 = 1.345096400295,
    # sample 1: 0.95·0.287682072452 + 0.028116757231 = 0.301414726060; mean 0.823255563177.
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    _, _, hard = _build("bootstrap-hard", 0.8)
    _, _, soft = _build("bootstrap-soft", 0.95)
    # a dozen float64 roundings of numbers below 2: 1e-15; the figures carry 12 decimals
    for method, value in ((hard, 0.727126987919), (soft, 0.823255563177)):
        want = torch.tensor(value, dtype=torch.float64)
        torch.testing.assert_close(objective_of(method)(logits, y), want, rtol=0, atol=1e-11)


def test_planted_bugs_give_other_values_or_gradients():
    logits, y = _clear_logits()
    _, _, hard = _build("bootstrap-hard", 0.8)
    got = objective_of(hard)(logits, y)
    # β and 1 − β swapped, or the soft target in place of the one-hot z: other values
    assert abs(float(got - reference_hard(logits, y, 0.2))) > 1e-2
    assert abs(float(got - reference_soft(logits, y, 0.8))) > 1e-2

    # soft with p detached in the target: the *same value*, but the gradient of β·CE alone
    # (the target term's gradient (1−β)(p − p̂) vanishes at p̂ = p) — only the gradient
    # check tells them apart
    _, _, soft = _build("bootstrap-soft", 0.8)
    loss = objective_of(soft)
    detached = reference_soft(logits, y, 0.8, detach=True)
    torch.testing.assert_close(loss(logits, y), detached, rtol=1e-12, atol=0)
    z = logits.clone().requires_grad_(True)
    (mine,) = torch.autograd.grad(loss(z, y), z)
    (theirs,) = torch.autograd.grad(reference_soft(z, y, 0.8, detach=True), z)
    (ce_only,) = torch.autograd.grad(0.8 * F.cross_entropy(z, y), z)
    torch.testing.assert_close(theirs, ce_only, rtol=1e-12, atol=1e-15)
    assert float((mine - theirs).abs().max()) > 1e-3
    assert not gradient_is_exact(lambda w: reference_soft(w, y, 0.8, detach=True), logits)


@pytest.mark.parametrize(("name", "beta"), [("bootstrap-hard", 0.7), ("bootstrap-soft", 0.6)])
def test_one_step_through_the_registry(name, beta):
    model, _, method = _build(name, beta)
    reference = reference_hard if name == "bootstrap-hard" else reference_soft
    x, y = batch64(0)
    with torch.no_grad():
        assert bool((model(x).argmax(1) != y).any())
    assert_step_matches(model, method, x, y, lambda z, t: reference(z, t, beta))


@pytest.mark.parametrize("kind", [BootstrapHardOptions, BootstrapSoftOptions])
def test_bad_options_are_refused(kind):
    with pytest.raises(ValueError, match=r"method.bootstrap_(hard|soft).beta must lie in \[0, 1\]"):
        kind(beta=1.1)
