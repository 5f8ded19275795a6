"""A training objective affine in the weights (label correction) keeps the meta step exact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import BnCnn, Mlp, random_batches
from numeric import central_differences
from rounding import central_difference_error

import mwnet
from mwnet.core.objective import (
    WeightedLoss,
    label_correction_loss,
    label_correction_mixup_loss,
)

IMAGE, CLASSES = (3, 8, 8), 5

# The finite-difference step: balances the truncation h²·|f⁽³⁾|/6 against the rounding
# γ_1000·|f|/h (rounding.central_difference_error), about 3e-9 each.
H = 1e-4


def _soft_labels(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, CLASSES, generator=g, dtype=torch.float64), -1)


class Teacher:
    """The soft labels of the batch being trained on, as a loss function reads them."""

    def __init__(self) -> None:
        self.p: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> WeightedLoss:
        return label_correction_loss(logits, y, self.p)

    @staticmethod
    def meta_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)


def test_label_correction_is_the_authors_mix():
    torch.manual_seed(0)
    logits, y = torch.randn(6, CLASSES, dtype=torch.float64), torch.randint(0, CLASSES, (6,))
    p, v = _soft_labels(6, 1), torch.rand(6, dtype=torch.float64)
    terms = label_correction_loss(logits, y, p)
    mix = v * F.cross_entropy(logits, y, reduction="none") + (1 - v) * F.cross_entropy(
        logits, p, reduction="none"
    )
    torch.testing.assert_close(terms.value(v / 6, terms.unweighted.mean()), mix.mean())
    torch.testing.assert_close(terms.losses, F.cross_entropy(logits, y, reduction="none"))


def _label_correcting(model, vnet, teacher: Teacher, lr: float, **kw) -> mwnet.MetaReweighter:
    """A reweighter on the label-correction objective with ``teacher``'s soft labels."""
    return mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        vnet,
        loss_fn=teacher.loss,
        meta_loss_fn=teacher.meta_loss,
        **kw,
    )


def _reference_hypergradient(model, vnet, batch, p, lr):
    """∂L_meta/∂Θ written out as the authors do it: a copied model, the mean of
    v·CE(y) + (1 − v)·CE(p) with v = V(CE(y)), a second-order SGD virtual step."""
    x, y, xm, ym = batch
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    theta = list(vnet.parameters())
    out = torch.func.functional_call(model, {**params, **buffers}, (x,))
    ce_y = F.cross_entropy(out, y, reduction="none")
    ce_p = F.cross_entropy(out, p, reduction="none")
    v = vnet(ce_y.detach())
    objective = (v * ce_y + (1 - v) * ce_p).mean()
    grads = torch.autograd.grad(objective, list(params.values()), create_graph=True)
    hat = {k: w - lr * g for (k, w), g in zip(params.items(), grads, strict=True)}
    meta_out = torch.func.functional_call(model, {**hat, **buffers}, (xm,))
    meta_loss = F.cross_entropy(meta_out, ym)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(meta_loss, theta)])


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_hypergradient_matches_the_authors_form(hypergrad):
    torch.manual_seed(0)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=10).double()
    teacher = Teacher()
    rw = _label_correcting(model, vnet, teacher, 0.3, normalize="mean", hypergrad=hypergrad)
    batch = random_batches(IMAGE, CLASSES, torch.float64, seed=3, n=16)
    teacher.p = _soft_labels(16, 4)
    got = torch.cat([g.reshape(-1) for g in rw.meta_gradient(*batch)[0]])
    want = _reference_hypergradient(model, vnet, batch, teacher.p, lr=0.3)
    assert want.norm() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the teacher term matters: without it the gradient is a different one
    plain = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.3),
        vnet,
        normalize="mean",
        hypergrad=hypergrad,
    )
    other = torch.cat([g.reshape(-1) for g in plain.meta_gradient(*batch)[0]])
    assert (other - want).norm() > 1e-3 * want.norm()


@pytest.mark.parametrize("normalize", ["sum", "mean"])  # sum-detached is no function's gradient
def test_reverse_matches_central_finite_differences(normalize):
    torch.manual_seed(0)
    model, vnet = Mlp(classes=CLASSES).double(), mwnet.WeightNet(hidden=4).double()
    teacher = Teacher()
    rw = _label_correcting(model, vnet, teacher, 0.5, hypergrad="reverse", normalize=normalize)
    batch = random_batches((6,), CLASSES, torch.float64, n=16)
    teacher.p = _soft_labels(16, 2)
    analytic = torch.cat([g.reshape(-1) for g in rw.meta_gradient(*batch)[0]])
    numeric = central_differences(list(vnet.parameters()), lambda: rw.meta_gradient(*batch)[1], H)
    assert numeric.norm() > 0
    # central differences with h = H miss each entry by at most
    # h²·|f⁽³⁾|/6 + γ_1000·|f|/h (rounding.central_difference_error; |f⁽³⁾| ≲ 1 for these
    # order-1 losses): 3e-9 + 1e-9·|f| an entry; a wrong hypergradient is off by 1e-3·|g|
    per_entry = central_difference_error(
        H, abs(float(rw.meta_gradient(*batch)[1])), 1.0, torch.float64
    )
    distance = float((analytic - numeric).norm())
    assert distance <= per_entry * numeric.numel() ** 0.5, (distance, float(numeric.norm()))


def _run(hypergrad="fast", steps=3, model=None, **kw) -> dict:
    torch.manual_seed(0)
    model = model or BnCnn(dropout=0.3).double()
    model = copy.deepcopy(model)
    vnet = mwnet.WeightNet(hidden=10).double()
    teacher = Teacher()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=0.5),
        loss_fn=teacher.loss,
        meta_loss_fn=teacher.meta_loss,
        hypergrad=hypergrad,
        **kw,
    )
    torch.manual_seed(7)
    for i in range(steps):
        teacher.p = _soft_labels(20, 100 + i)
        rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=i, n=20))
    return {**model.state_dict(), **{f"v.{k}": v for k, v in vnet.state_dict().items()}}


def _assert_close_runs(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_fast_equals_reverse_over_steps(normalize):
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.8e-16 of each other; 1e-12 is over
    # 3500 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(
        _run("fast", normalize=normalize, virtual_step="optimizer"),
        _run("reverse", normalize=normalize, virtual_step="optimizer"),
        rtol=1e-9,
        atol=1e-12,
    )


def test_low_memory_equals_the_default_path():
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.8e-16 of each other; 1e-12 is over
    # 3500 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(_run(low_memory=True), _run(), rtol=0, atol=1e-12)


def test_compiled_step_equals_the_eager_step():
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.8e-16 of each other; 1e-11 is over
    # 35000 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(_run(compile=True), _run(), rtol=1e-9, atol=1e-11)


def test_head_equals_fast_when_only_the_head_trains():
    """With the body frozen the head mode's restricted problem is the whole problem."""
    torch.manual_seed(0)
    model = BnCnn().double()
    for p in (*model.conv.parameters(), *model.bn.parameters()):
        p.requires_grad_(False)
    # two formulas of one hypergradient over three steps with dropout (no reordered run
    # can measure the noise): measured within 2.8e-16; 1e-12 is 3500 times that
    _assert_close_runs(_run("head", model=model), _run("fast", model=model), rtol=1e-9, atol=1e-12)


def test_the_real_update_descends_the_mixed_objective():
    """A frozen net: the update is exactly SGD on mean(v·CE(y) + (1 − v)·CE(p))."""
    torch.manual_seed(0)
    model, vnet = Mlp(classes=CLASSES).double(), mwnet.WeightNet(hidden=4).double()
    reference = copy.deepcopy(model)
    teacher = Teacher()
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.3),
        vnet,
        loss_fn=teacher.loss,
        meta_loss_fn=teacher.meta_loss,
        normalize="mean",
        frozen=True,
    )
    opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    x, y, _, _ = random_batches((6,), CLASSES, torch.float64, n=16)
    teacher.p = _soft_labels(16, 5)
    result = rw.step(x, y)
    out = reference(x)
    ce_y = F.cross_entropy(out, y, reduction="none")
    with torch.no_grad():
        v = vnet(ce_y)
    loss = (v * ce_y + (1 - v) * F.cross_entropy(out, teacher.p, reduction="none")).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.testing.assert_close(result.loss, loss.detach())
    torch.testing.assert_close(result.losses, ce_y.detach())
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-12, atol=1e-14)


def test_parts_of_the_wrong_shape_are_named():
    model = Mlp(classes=CLASSES).double()

    def bad(logits, y):
        terms = label_correction_loss(logits, y, torch.full((len(y), CLASSES), 1 / CLASSES))
        return WeightedLoss(terms.weighted, terms.unweighted.mean(), terms.weigh_by)

    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=bad, checks=False
    )
    x, y, xm, ym = random_batches((6,), CLASSES, torch.float64, n=8)
    with pytest.raises(ValueError, match=r"WeightedLoss.unweighted must hold one value per"):
        rw.step(x, y, xm, ym)


def test_mixup_objective_is_the_authors_two_label_mix():
    torch.manual_seed(0)
    n, lam = 6, 0.7
    logits, y = torch.randn(n, CLASSES, dtype=torch.float64), torch.randint(0, CLASSES, (n,))
    p, partner = _soft_labels(n, 1), torch.randperm(n)
    v = torch.rand(2 * n, dtype=torch.float64)
    terms = label_correction_mixup_loss(logits, y, p, partner, lam)
    ce = lambda target: F.cross_entropy(logits, target, reduction="none")  # noqa: E731
    v1, v2 = v[:n], v[n:]
    want = lam * (v1 * ce(y) + (1 - v1) * ce(p)) + (1 - lam) * (
        v2 * ce(y[partner]) + (1 - v2) * ce(p[partner])
    )
    torch.testing.assert_close(terms.value(v / (2 * n), terms.unweighted.mean()), want.mean())
    assert torch.equal(terms.weigh_labels, torch.cat([y, y[partner]]))
    torch.testing.assert_close(terms.losses, torch.cat([ce(y), ce(y[partner])]))


@pytest.mark.parametrize("net", ["mwnet", "cmwnet"])
def test_mixup_hypergradient_fast_equals_reverse_and_finite_differences(net):
    """Two weights per mixed sample, each from its own label's loss (class-aware: its own
    label's head); the hypergradient through both stays exact."""
    torch.manual_seed(0)
    model = Mlp(classes=CLASSES).double()
    if net == "cmwnet":
        vnet = mwnet.ClassAwareWeightNet([50, 40, 9, 8, 2], hidden=4).double()
    else:
        vnet = mwnet.WeightNet(hidden=4).double()
    x, y, xm, ym = random_batches((6,), CLASSES, torch.float64, n=12)
    p, partner, lam = _soft_labels(12, 3), torch.randperm(12), 0.8
    mixed = lam * x + (1 - lam) * x[partner]

    def loss(logits, labels):
        return label_correction_mixup_loss(logits, labels, p, partner, lam)

    grads = {}
    for mode in ("reverse", "fast"):
        rw = mwnet.MetaReweighter(
            model,
            torch.optim.SGD(model.parameters(), lr=0.5),
            vnet,
            loss_fn=loss,
            meta_loss_fn=Teacher.meta_loss,
            normalize="mean",
            hypergrad=mode,
        )
        grads[mode] = torch.cat([g.reshape(-1) for g in rw.meta_gradient(mixed, y, xm, ym)[0]])
    torch.testing.assert_close(grads["fast"], grads["reverse"], rtol=1e-9, atol=1e-12)
    numeric = central_differences(
        list(vnet.parameters()), lambda: rw.meta_gradient(mixed, y, xm, ym)[1], H
    )
    # central differences with h = H miss each entry by at most
    # h²·|f⁽³⁾|/6 + γ_1000·|f|/h (rounding.central_difference_error; |f⁽³⁾| ≲ 1 for these
    # order-1 losses): 3e-9 + 1e-9·|f| an entry; a wrong hypergradient is off by 1e-3·|g|
    per_entry = central_difference_error(
        H, abs(float(rw.meta_gradient(mixed, y, xm, ym)[1])), 1.0, torch.float64
    )
    distance = float((grads["reverse"] - numeric).norm())
    assert distance <= per_entry * numeric.numel() ** 0.5, (distance, float(numeric.norm()))
