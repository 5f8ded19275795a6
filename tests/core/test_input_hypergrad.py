"""The hypergradient of a weighting net that reads more than the loss is exact given its
inputs: fast == reverse == finite differences == a reference written out here, in float64,
with every input (the per-sample averages and loss sequences already holding earlier
visits). The inputs are constants of the meta gradient, as the authors' detached loss is: a
planted input left attached to the model's graph, or a loss sequence that lags one visit
behind, moves the hypergradient far outside the bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import Mlp
from numeric import central_differences
from rounding import assert_within_order_noise, central_difference_error
from torch.func import functional_call

import mwnet
from mwnet.core import weight_inputs
from mwnet.core.weight_inputs import WEIGHT_INPUTS

INPUTS = WEIGHT_INPUTS  # every input; the reference below computes each by hand
CLASSES, SAMPLES, DECAY, LR, HISTORY = 4, 24, 0.8, 0.5, 3
H = 1e-4
"""Finite-difference step: the truncation h²·|f⁽³⁾|/6 and the rounding gamma_1000·|f|/h
(rounding.central_difference_error) are then about 2e-9 and 1e-9 an entry."""


def _data(seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(SAMPLES, generator=g)[:n]
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x[torch.arange(n), y] += 1.0  # learnable: the losses differ between samples
    xm = torch.randn(10, 6, generator=g, dtype=torch.float64)
    ym = torch.randint(0, CLASSES, (10,), generator=g)
    return x, y, xm, ym, index


def _trained(hypergrad: str = "fast"):
    """A model and a multi-input net after three steps, so that some rows of the averages
    hold earlier visits and some loss sequences two of them (the compared batch shifts
    them again); and the batch whose hypergradient is compared."""
    torch.manual_seed(0)
    model = Mlp(classes=CLASSES).double()
    net = mwnet.WeightNet(
        hidden=6, inputs=INPUTS, num_classes=CLASSES, dynamics_decay=DECAY, history=HISTORY
    ).double()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rw = mwnet.MetaReweighter(
        model, opt, net, torch.optim.SGD(net.parameters(), lr=0.3), num_samples=SAMPLES
    )
    for seed in (1, 2, 4):
        x, y, xm, ym, index = _data(seed, 12)
        rw.step(x, y, xm, ym, index)
    assert 0 < int(rw.inputs.seen.sum()) < SAMPLES
    history = rw.inputs.table[:, 4:]
    assert bool((history[:, 0] != history[:, 1]).any())  # a sequence already moved twice
    if hypergrad != "fast":
        other = mwnet.MetaReweighter(
            model,
            opt,
            net,
            hypergrad=hypergrad,
            num_samples=SAMPLES,  # type: ignore[arg-type]
        )
        other.inputs.load_state_dict(rw.inputs.state_dict())
        rw = other
    return rw, model, net, _data(3, 14)


def _reference_inputs(logits, y, losses, table, seen, index):
    """Every input by hand, from detached values, in INPUTS order."""
    logits, losses = logits.detach(), losses.detach()
    n = len(y)
    margin = torch.stack(
        [logits[i, y[i]] - max(logits[i, k] for k in range(CLASSES) if k != y[i]) for i in range(n)]
    )
    confidence = torch.stack(
        [torch.exp(logits[i, y[i]]) / torch.exp(logits[i]).sum() for i in range(n)]
    )
    agreement = (margin > 0).double()
    now = torch.stack([losses, margin, confidence, agreement], 1)
    rows = torch.stack(
        [
            DECAY * table[i, :4] + (1 - DECAY) * now[k] if seen[i] else now[k]
            for k, i in enumerate(index)
        ]
    )
    # the loss sequence: the last HISTORY - 1 losses kept, then this visit's; a first
    # visit's loss in every column
    history = torch.stack(
        [
            torch.cat([table[i, 5:], losses[k : k + 1]]) if seen[i] else losses[k].repeat(HISTORY)
            for k, i in enumerate(index)
        ]
    )
    rank = []
    for i in range(n):
        same = [j for j in range(n) if y[j] == y[i] and j != i]
        below = sum(
            float(losses[j] < losses[i]) + 0.5 * float(losses[j] == losses[i]) for j in same
        )
        rank.append(below / len(same) if same else 0.5)
    one_hot = torch.eye(CLASSES, dtype=torch.float64)[y]
    rank = torch.tensor(rank, dtype=torch.float64)
    return torch.cat([losses[:, None], one_hot, rows, history, rank[:, None]], 1)


def _reference_hypergradient(model, net, table, seen, batch, order=None):
    """∂L_meta(θ̂)/∂Θ written out: inputs as constants, w = V(inputs; Θ), c = w / Σw,
    θ̂ = θ − α ∇_θ Σ c_i L_i (second order), L_meta = mean CE at θ̂. ``order`` permutes the
    samples (the same sums in another order)."""
    x, y, xm, ym, index = batch
    if order is not None:
        x, y, index = x[order], y[order], index[order]
    theta = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    big = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    logits = functional_call(model, theta, (x,))
    losses = F.cross_entropy(logits, y, reduction="none")
    inputs = _reference_inputs(logits, y, losses, table, seen, index)
    weights = functional_call(net, big, (inputs,)).squeeze(1)
    coefficients = weights / weights.sum()
    grads = torch.autograd.grad(
        torch.dot(coefficients, losses), list(theta.values()), create_graph=True
    )
    theta_hat = {k: p - LR * g for (k, p), g in zip(theta.items(), grads, strict=True)}
    meta = F.cross_entropy(functional_call(model, theta_hat, (xm,)), ym)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(meta, list(big.values()))])


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def _reference_and_noise(model, net, rw, batch):
    table, seen = rw.inputs.table.clone(), rw.inputs.seen.clone()
    reference = _reference_hypergradient(model, net, table, seen, batch)
    g = torch.Generator().manual_seed(7)
    reordered = [
        _reference_hypergradient(model, net, table, seen, batch, torch.randperm(14, generator=g))
        for _ in range(3)
    ]
    return reference, reordered


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
def test_hypergradient_equals_the_reference(hypergrad):
    """Equal up to the order of the sums (the bound: the reference's own spread when its
    samples are shuffled, tests/rounding.py)."""
    rw, model, net, batch = _trained(hypergrad)
    got = _flat(rw.meta_gradient(*batch)[0])
    reference, reordered = _reference_and_noise(model, net, rw, batch)
    assert reference.norm() > 0
    assert_within_order_noise(got, reference, reordered, f"{hypergrad} hypergradient")


def test_reverse_matches_finite_differences_of_the_meta_loss():
    rw, _, net, batch = _trained("reverse")
    analytic = _flat(rw.meta_gradient(*batch)[0])
    numeric = central_differences(list(net.parameters()), lambda: rw.meta_gradient(*batch)[1], H)
    assert numeric.norm() > 0
    # each entry within h²·|f⁽³⁾|/6 + γ_1000·|f|/h (|f⁽³⁾| ≲ 1 for these order-1 losses)
    per_entry = central_difference_error(
        H, abs(float(rw.meta_gradient(*batch)[1])), 1.0, torch.float64
    )
    assert float((analytic - numeric).norm()) <= per_entry * numeric.numel() ** 0.5


def test_the_table_is_read_not_written():
    rw, _, _, batch = _trained("fast")
    before = rw.inputs.state_dict()
    rw.meta_gradient(*batch)
    after = rw.inputs.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _attached_observe(output, labels, losses, names):
    """A plausible bug: the margin and probability read from the live logits."""
    z = output.to(losses.dtype)
    given = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], float("-inf")).amax(1)
    columns = {
        "loss_ema": losses,
        "margin": given - others,
        "confidence": F.softmax(z, dim=1).gather(1, labels[:, None]).squeeze(1),
        "agreement": (given > others).to(losses.dtype),
    }
    return torch.stack([columns[n] for n in names], 1)


def test_an_input_left_attached_is_caught(monkeypatch):
    """The inputs must be constants of the meta gradient: an attached margin adds
    ∂V/∂margin · ∂margin/∂θ to the virtual step's gradient, which moves the reverse
    hypergradient away from the reference (and from fast, which never differentiates the
    coefficients in θ) by far more than rounding."""
    rw, model, net, batch = _trained("reverse")
    monkeypatch.setattr(weight_inputs, "observe", _attached_observe)
    planted = _flat(rw.meta_gradient(*batch)[0])
    reference, reordered = _reference_and_noise(model, net, rw, batch)
    with pytest.raises(AssertionError, match="more than rounding explains"):
        assert_within_order_noise(planted, reference, reordered, "planted")


def _lagging_push(old, loss, seen):
    """A plausible bug: the sequence of the earlier visits only, one visit behind."""
    return torch.where(seen[:, None], old, loss[:, None].expand(-1, old.shape[1]))


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
def test_a_loss_sequence_one_visit_behind_is_caught(monkeypatch, hypergrad):
    """The sequence must end with this visit's loss: one that lags a visit feeds the net
    other numbers for every sample seen before, and the hypergradient moves away from the
    reference by far more than rounding."""
    rw, model, net, batch = _trained(hypergrad)
    monkeypatch.setattr(weight_inputs, "push_loss", _lagging_push)
    planted = _flat(rw.meta_gradient(*batch)[0])
    monkeypatch.undo()
    reference, reordered = _reference_and_noise(model, net, rw, batch)
    with pytest.raises(AssertionError, match="more than rounding explains"):
        assert_within_order_noise(planted, reference, reordered, "planted")


@pytest.mark.parametrize("hypergrad", ["head", "partial"])
def test_restricted_modes_take_the_inputs_as_they_are(hypergrad):
    """head and partial differentiate the same weights (the same constant inputs): with a
    top holding every parameter, partial is fast's problem; head runs on the last layer."""
    torch.manual_seed(0)
    model = Mlp(classes=CLASSES).double()
    net = mwnet.WeightNet(hidden=6, inputs=INPUTS, num_classes=CLASSES, history=HISTORY).double()
    kw = {"partial": "head"} if hypergrad == "partial" else {}
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=LR),
        net,
        hypergrad=hypergrad,  # type: ignore[arg-type]
        num_samples=SAMPLES,
        **kw,
    )
    for seed in (1, 2):
        out = rw.step(*_data(seed, 12))
        assert out.meta_loss is not None and torch.isfinite(out.weights).all()
    assert int(rw.inputs.seen.sum()) > 12
