"""Focal and class-balanced losses: their limits are plain CE, and their weights are right."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_nets import CLASSES, assert_same, batch, build, make_model, state
from rounding import relative_sum_bound

from mwnet.methods import build_method
from mwnet.methods.losses import class_balanced_weights, focal_losses


def _run(name: str, options: dict, kind: str = "cnn") -> tuple[dict, list]:
    torch.manual_seed(0)
    model = make_model(kind, dropout=0.2)
    _, method = build(name, model, kind, options)
    outs = []
    for i in range(3):
        torch.manual_seed(i)
        outs.append(method.step(*batch(kind, i)))
    return state(model), outs


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("focal", {"focal_gamma": 0.0}),
        ("class-balanced", {"cb_beta": 0.0}),
        ("class-balanced", {"cb_beta": 0.0, "cb_loss": "focal", "focal_gamma": 0.0}),
    ],
)
def test_limits_equal_cross_entropy_exactly(name, options):
    want, ce_outs = _run("ce", {})
    got, outs = _run(name, options)
    assert_same(got, want, rtol=0, atol=0)
    for a, b in zip(outs, ce_outs, strict=True):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.losses, b.losses)
    if name == "class-balanced":
        assert all(torch.equal(o.weights, torch.ones(10)) for o in outs)


def test_focal_loss_value_and_outputs():
    torch.manual_seed(0)
    model = make_model("mlp").double()
    x, y = batch("mlp", 0, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    logp = F.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
    want = (-((1 - logp.exp()) ** 2.0) * logp).mean()
    _, method = build("focal", model, "mlp", {"focal_gamma": 2.0})
    out = method.step(x, y)
    # float64, one forward apart: log-softmax of 5 logits, expm1, pow, the mean of 10
    # positive terms differ by a few dozen roundings, 2e-15; 1e-12 is 500x that, and
    # γ = 1 instead of 2 moves the loss by 10% and more
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.losses, -logp, rtol=1e-12, atol=0)
    assert out.weights is None


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_stays_finite_for_certain_samples(gamma):
    ce = torch.tensor([0.0, 1e-30, 1e-8, 3.0], requires_grad=True)
    focal_losses(ce, gamma).sum().backward()
    assert bool(torch.isfinite(ce.grad).all())
    assert float(ce.grad[-1]) > 0


def test_rare_classes_get_larger_weights():
    w = class_balanced_weights(torch.tensor([500, 100, 20, 5, 1]), 0.999)
    assert bool((w[1:] > w[:-1]).all())
    # 5 positive weights scaled to sum 5 (Σ in 4 roundings, a quotient and a product), then
    # summed again (4 more): within γ_10 of the exact 5
    want_sum = torch.tensor(5.0, dtype=torch.float64)
    torch.testing.assert_close(w.sum(), want_sum, rtol=relative_sum_bound(10, w.dtype), atol=0)
    raw = (1 - 0.999) / (1 - 0.999 ** torch.tensor([500, 100, 20, 5, 1], dtype=torch.float64))
    # the raw weights run the same torch.pow, subtraction and quotient as the code (so the
    # cancellation in 1 − β^1 is the same on both sides); the normalisations differ by a
    # 5-term positive sum (4 roundings), a quotient and a product each: within 2·γ_6.
    # Measured 1.7e-16 of 1.3e-15; a wrong β or count is off by 1e-3 and more
    torch.testing.assert_close(w, raw * 5 / raw.sum(), rtol=relative_sum_bound(6, w.dtype), atol=0)


def test_empty_classes_get_zero_weight_without_dividing_by_zero():
    w = class_balanced_weights(torch.tensor([30, 0, 3, 0, 1]), 0.9)
    assert bool(torch.isfinite(w).all())
    assert float(w[1]) == 0.0 and float(w[3]) == 0.0
    want_sum = torch.tensor(3.0, dtype=torch.float64)  # as above: within γ_10 of 3
    torch.testing.assert_close(w.sum(), want_sum, rtol=relative_sum_bound(10, w.dtype), atol=0)
    assert torch.equal(
        class_balanced_weights(torch.tensor([4, 0, 9]), 0.0), torch.tensor([1.0, 0, 1])
    )


def test_class_balanced_step_uses_label_weights():
    torch.manual_seed(0)
    model = make_model("mlp").double()
    x, y = batch("mlp", 0, dtype=torch.float64)
    counts = torch.tensor([50, 20, 10, 5, 2])
    class_w = class_balanced_weights(counts, 0.99)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y, reduction="none")
    _, method = build("class-balanced", model, "mlp", {"cb_beta": 0.99})
    out = method.step(x, y)
    torch.testing.assert_close(out.weights, class_w[y], rtol=0, atol=0)
    # float64, one forward and a 10-term positive sum apart: within 2·γ_30 = 7e-15 for the
    # forward's roundings; 1e-12 is 100x that, a wrong label weight moves it by 1e-2
    torch.testing.assert_close(out.loss, (class_w[y] * ce).sum() / len(y), rtol=1e-12, atol=0)
    assert float(out.weights[y == 4][0]) > float(out.weights[y == 0][0])


@pytest.mark.parametrize(
    ("options", "counts", "match"),
    [
        ({"cb_beta": 1.0}, torch.ones(CLASSES), r"cb_beta must lie in \[0, 1\)"),
        ({"cb_loss": "dice"}, torch.ones(CLASSES), "cb_loss must be one of"),
        ({}, torch.zeros(CLASSES), "no class with samples"),
        ({}, torch.tensor([3.0, -1, 2, 2, 2]), "finite and >= 0"),
        ({"focal_gamma": -1.0, "cb_loss": "focal"}, torch.ones(CLASSES), "focal_gamma must be"),
    ],
)
def test_bad_class_balanced_options(options, counts, match):
    model = make_model("mlp")
    with pytest.raises(ValueError, match=match):
        build_method(
            "class-balanced",
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            meta_batches=iter(()),
            class_counts=counts,
            options=options,
        )


def test_class_counts_must_match_the_model_outputs():
    model = make_model("mlp")
    method = build_method(
        "class-balanced",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES + 1),
        options={},
    )
    before = copy.deepcopy(state(model))
    with pytest.raises(ValueError, match="class_counts has 6 entries but the model outputs 5"):
        method.step(*batch("mlp", 0))
    assert_same(state(model), before, rtol=0, atol=0)
