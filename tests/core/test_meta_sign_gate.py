"""gate="meta-sign": the real update keeps a sample's weight only where its own meta
gradient g_i = ∂L_meta(θ − α∇_θ Σ_j ε_j L_j)/∂ε_i at ε = 0 is negative. Held to
per-sample gradients written out here in float64, for fixed weights (a frozen net) and
fixed batches, in both exact modes; the weighting net learns as without the gate."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import Mlp
from rounding import sum_bound, ulps
from torch.func import functional_call

import mwnet
from mwnet.methods import L2RW, MetaWeightNet

LR, CLASSES = 0.5, 4


def _batch(seed: int = 1, n: int = 16, m: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x[: n // 2][torch.arange(n // 2), y[: n // 2]] += 1.5  # half of them learnable
    xm = torch.randn(m, 6, generator=g, dtype=torch.float64)
    ym = torch.randint(0, CLASSES, (m,), generator=g)
    xm[torch.arange(m), ym] += 1.5
    return x, y, xm, ym


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Mlp(classes=CLASSES).double()


def _reference_scores(model, x, y, xm, ym):
    """g_i = −α Σ_p ⟨∂L_meta/∂θ_p, ∂L_i/∂θ_p⟩ at θ from n per-sample backward passes, and
    the most two orders of each of these sums of products can differ by
    (rounding.sum_bound over the Σ_p|terms|)."""
    params = dict(model.named_parameters())
    meta = F.cross_entropy(functional_call(model, params, (xm,)), ym)
    meta_grad = torch.autograd.grad(meta, list(params.values()))
    scores, bounds = [], []
    count = sum(p.numel() for p in params.values())
    for i in range(len(y)):
        loss = F.cross_entropy(functional_call(model, params, (x[i : i + 1],)), y[i : i + 1])
        grad = torch.autograd.grad(loss, list(params.values()))
        terms = torch.cat([(LR * a * b).reshape(-1) for a, b in zip(meta_grad, grad, strict=True)])
        scores.append(-terms.sum())
        bounds.append(sum_bound(count, terms.abs().sum(), torch.float64))
    return torch.stack(scores).detach(), torch.tensor(bounds, dtype=torch.float64)


def _frozen_reweighter(model, hypergrad, gate="meta-sign"):
    torch.manual_seed(1)
    net = mwnet.WeightNet(hidden=5).double()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    return mwnet.MetaReweighter(model, opt, net, frozen=True, hypergrad=hypergrad, gate=gate), net


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
def test_gate_and_update_match_the_reference(hypergrad):
    model = _model()
    x, y, xm, ym = _batch()
    scores, bounds = _reference_scores(model, x, y, xm, ym)
    # every score is farther from 0 than rounding reaches: its sign is the reference's
    assert (scores.abs() > bounds).all()
    gate = scores < 0
    assert 0 < int(gate.sum()) < len(y)  # the gate keeps some samples and drops others
    theta = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    rw, net = _frozen_reweighter(model, hypergrad)
    with torch.no_grad():
        losses = F.cross_entropy(model(x), y, reduction="none")
        weights = net(losses) * gate
    out = rw.step(x, y, xm, ym)
    assert torch.equal(out.gate, gate)
    assert torch.equal(out.weights, weights)  # the net's weight times the gate, no more
    # the real update is SGD on Σ c_i L_i with c the gated weights normalised (sum)
    coefficients = weights / weights.sum()
    assert torch.equal(out.coefficients, coefficients)
    objective = torch.dot(
        coefficients, F.cross_entropy(functional_call(model, theta, (x,)), y, reduction="none")
    )
    for (name, before), step in zip(
        theta.items(), torch.autograd.grad(objective, list(theta.values())), strict=True
    ):
        # the same graph gives the same gradient; SGD's θ + (−α)·g may fuse the multiply
        # and add where the reference rounds α·g first: two roundings of numbers <= scale
        want = before.detach() - LR * step
        scale = max(float(before.detach().abs().max()), float((LR * step).abs().max()))
        got = dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(got, want, rtol=0, atol=ulps(2, scale, torch.float64))


def test_the_gate_is_l2rws_score_sign():
    """The same per-sample meta gradient L2RW weighs by (max(−g, 0))."""
    model = _model()
    x, y, xm, ym = _batch()
    twin = copy.deepcopy(model)
    l2rw = L2RW(twin, torch.optim.SGD(twin.parameters(), lr=LR), iter(()))
    scores, _ = l2rw.meta_gradient(x, y, xm, ym)
    reference, bounds = _reference_scores(model, x, y, xm, ym)
    assert ((scores - reference).abs() <= bounds).all()
    rw, _ = _frozen_reweighter(model, "fast")
    assert torch.equal(rw.step(x, y, xm, ym).gate, scores < 0)


def test_the_gate_is_not_the_derivative_at_the_virtual_step():
    """A plausible wrong signal: the fast hypergradient's ∂L_meta/∂c_i, −α⟨∇L_meta(θ̂),
    ∇L_i(θ)⟩ at θ̂ = θ − α∇Σ c_i L_i (the virtual step on the net's weights) instead of at
    ε = 0. On this batch it gates another set of samples than the reference, which the
    step's gate matches."""
    model = _model()
    x, y, xm, ym = _batch()
    reference, _ = _reference_scores(model, x, y, xm, ym)
    params = dict(model.named_parameters())
    losses = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
    torch.manual_seed(1)
    net = mwnet.WeightNet(hidden=5).double()  # the frozen net of _frozen_reweighter
    with torch.no_grad():
        c = net(losses.detach())
        c = c / c.sum()
    grads = torch.autograd.grad(torch.dot(c, losses), list(params.values()))
    at_virtual_step = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(at_virtual_step.parameters(), grads, strict=True):
            p.sub_(LR * g)
    meta = F.cross_entropy(at_virtual_step(xm), ym)
    meta_grad = torch.autograd.grad(meta, list(at_virtual_step.parameters()))
    wrong = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grad = torch.autograd.grad(loss, list(model.parameters()))
        wrong.append(-LR * sum((a * b).sum() for a, b in zip(meta_grad, grad, strict=True)))
    wrong_gate = torch.stack(wrong) < 0
    assert not torch.equal(wrong_gate, reference < 0)
    rw, _ = _frozen_reweighter(model, "fast")
    assert torch.equal(rw.step(x, y, xm, ym).gate, reference < 0)


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
def test_the_weighting_net_learns_as_without_the_gate(hypergrad):
    """Only the real update is gated: the net's step is the ungated one, to the bit."""
    nets, models = {}, {}
    for gate in ("none", "meta-sign"):
        model = _model()
        torch.manual_seed(1)
        net = mwnet.WeightNet(hidden=5).double()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        rw = mwnet.MetaReweighter(
            model,
            opt,
            net,
            torch.optim.SGD(net.parameters(), lr=0.3),
            hypergrad=hypergrad,
            gate=gate,  # type: ignore[arg-type]
        )
        rw.step(*_batch())
        nets[gate], models[gate] = net.state_dict(), model.state_dict()
    assert all(torch.equal(nets["none"][k], nets["meta-sign"][k]) for k in nets["none"])
    assert not torch.equal(models["none"]["head.weight"], models["meta-sign"]["head.weight"])


def test_a_gated_method_draws_a_meta_batch_every_step():
    drawn = []

    def stream():
        i = 0
        while True:
            drawn.append(i)
            i += 1
            yield _batch(100 + i)[2:]

    model = _model()
    method = MetaWeightNet(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        stream(),
        meta_interval=3,
        gate="meta-sign",
    )
    metas = [method.step(*_batch(i)[:2]).meta_loss for i in range(4)]
    assert [m is not None for m in metas] == [True, False, False, True]
    assert drawn == [0, 1, 2, 3]
    rw = method.reweighter
    with pytest.raises(ValueError, match="gates the weights and needs a meta batch"):
        rw.step(*_batch(9)[:2])


@pytest.mark.parametrize("hypergrad", ["head", "partial"])
def test_restricted_modes_are_refused_with_the_fix(hypergrad):
    model = _model()
    with pytest.raises(ValueError, match="use hypergrad='fast' or 'reverse' with the gate"):
        mwnet.MetaReweighter(
            model,
            torch.optim.SGD(model.parameters(), lr=LR),
            hypergrad=hypergrad,  # type: ignore[arg-type]
            gate="meta-sign",
        )
    with pytest.raises(ValueError, match="gate must be one of none, meta-sign"):
        mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=LR), gate="sign")  # type: ignore[arg-type]
