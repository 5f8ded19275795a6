"""The hypergradient ∂L_meta/∂Θ: reverse against finite differences, fast against reverse."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import BnCnn, Mlp, random_batches
from numeric import central_differences

import mwnet


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("normalize", ["sum", "mean", "none"])
def test_reverse_matches_central_finite_differences(normalize):
    torch.manual_seed(0)
    model, vnet = Mlp().double(), mwnet.WeightNet(hidden=6).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rw = mwnet.MetaReweighter(model, opt, vnet, hypergrad="reverse", normalize=normalize)
    batch = random_batches((6,), 4, torch.float64)
    analytic = _flat(rw.meta_gradient(*batch)[0])
    numeric = central_differences(list(vnet.parameters()), lambda: rw.meta_gradient(*batch)[1])
    assert analytic.norm() > 0
    assert _rel(analytic, numeric) <= 1e-6


def _hypergrads(dtype, normalize, virtual_step, dropout, nesterov=True, dampening=0.0):
    """fast and reverse hypergradients of the same state, after one real step (so the
    momentum buffer exists and the virtual step must read it)."""
    torch.manual_seed(0)
    base, vbase = BnCnn(dropout).to(dtype), mwnet.WeightNet(hidden=10).to(dtype)
    batch = random_batches((3, 8, 8), 5, dtype)
    out = {}
    for mode in ("reverse", "fast"):
        model, vnet = copy.deepcopy(base), copy.deepcopy(vbase)
        opt = torch.optim.SGD(
            model.parameters(),
            lr=0.3,
            momentum=0.9,
            nesterov=nesterov,
            weight_decay=5e-4,
            dampening=dampening,
        )
        rw = mwnet.MetaReweighter(
            model,
            opt,
            vnet,
            torch.optim.SGD(vnet.parameters(), lr=1e-2),
            hypergrad=mode,
            normalize=normalize,
            virtual_step=virtual_step,
        )
        torch.manual_seed(1)
        rw.step(*batch)
        torch.manual_seed(2)
        out[mode] = _flat(rw.meta_gradient(*batch)[0])
    assert out["reverse"].norm() > 0
    return out["fast"], out["reverse"]


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
@pytest.mark.parametrize("normalize", ["sum", "sum-detached", "mean"])
def test_fast_equals_reverse_float64(normalize, virtual_step):
    fast, reverse = _hypergrads(torch.float64, normalize, virtual_step, dropout=0.3)
    assert _rel(fast, reverse) <= 1e-8


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_fast_equals_reverse_float32(normalize, virtual_step):
    fast, reverse = _hypergrads(torch.float32, normalize, virtual_step, dropout=0.0)
    assert _rel(fast, reverse) <= 1e-4


@pytest.mark.parametrize(("nesterov", "dampening"), [(False, 0.0), (False, 0.2), (True, 0.0)])
def test_fast_equals_reverse_for_each_momentum_rule(nesterov, dampening):
    fast, reverse = _hypergrads(
        torch.float64, "sum", "optimizer", dropout=0.0, nesterov=nesterov, dampening=dampening
    )
    assert _rel(fast, reverse) <= 1e-8


def test_virtual_step_kinds_differ_when_momentum_is_on():
    """Guards the comparisons above against a virtual step that ignores its kind."""
    sgd, _ = _hypergrads(torch.float64, "sum", "sgd", dropout=0.0)
    mirrored, _ = _hypergrads(torch.float64, "sum", "optimizer", dropout=0.0)
    assert _rel(sgd, mirrored) > 1e-3
