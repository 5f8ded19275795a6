"""MentorNet's predefined curriculum: a moving average of a batch-loss percentile as the
threshold, the burn-in, and the soft end, against the authors' formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_nets import batch, make_model
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

from mwnet.methods.mentornet import MentorNetOptions, MentorNetPD, nearest_percentile


def tf_percentile(values: list[float], p: float) -> float:
    """tf.contrib.distributions.percentile(x, 100p), interpolation "nearest": sort from
    the largest and take index round((n − 1)(1 − p)), tf.round rounding half to even."""
    from_top = sorted(values, reverse=True)
    return from_top[round((len(values) - 1) * (1 - p))]


def vstar(losses: torch.Tensor, threshold: float, percent: int) -> torch.Tensor:
    """The authors' vstar_mentornet_pd (vstar_gamma = 1) on (loss, loss − λ, percent):
    1 up to 18%, then vstar_self_paced (diff <= 0 -> 1, diff > 0 -> 0) below 90%, then
    vstar_spcl_linear, clip(−diff + 1, 0, 1)."""
    out = []
    for loss in losses.detach().tolist():
        diff = loss - threshold
        if percent <= 18:
            out.append(1.0)
        elif percent < 90:
            out.append(1.0 if diff <= 0 else 0.0)
        else:
            out.append(max(0.0, min(1.0, -diff + 1.0)))
    return torch.tensor(out, dtype=losses.dtype)


def _mentornet(percentile=0.7, decay=0.5, burn_in=None, epochs=10):
    model = model64()
    group = {"percentile": percentile, "ema_decay": decay, "burn_in_epochs": burn_in}
    return model, *build64("mentornet-pd", model, {"mentornet": group, "epochs": epochs})


@pytest.mark.parametrize(
    ("n", "p"), [(10, 0.5), (10, 0.7), (12, 0.75), (7, 0.5), (100, 0.7), (5, 0.0), (5, 1.0)]
)
def test_the_percentile_is_the_authors(n, p):
    values = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    assert float(nearest_percentile(values, p)) == tf_percentile(values.tolist(), p)


def test_the_percentile_differs_from_numpys_nearest_on_a_tie():
    # n = 10, p = 0.5: index 4.5 from the top rounds to 4, the 6th smallest; numpy's and
    # torch's "nearest" round 4.5 from the bottom to 4, the 5th smallest
    values = torch.arange(10, dtype=torch.float64)
    assert float(nearest_percentile(values, 0.5)) == 5.0
    assert float(torch.quantile(values, 0.5, interpolation="nearest")) == 4.0


@pytest.mark.parametrize(("epoch", "start"), [(5, 1.3), (5, 3.0), (9, 1.3)])
def test_loss_equals_the_curriculum_and_its_gradient_is_exact(epoch, start):
    _, _, method = _mentornet(percentile=0.7, decay=0.9, epochs=10)
    method.begin_epoch(epoch)  # 50%: self-paced; 90%: the soft end
    method.threshold = start
    logits, y = fixed_logits(n=12)
    ce = F.cross_entropy(logits, y, reduction="none")
    threshold = 0.9 * start + 0.1 * tf_percentile(ce.tolist(), 0.7)
    v = vstar(ce, threshold, 10 * epoch)
    assert 0 < float(v.sum()) < len(y)  # some samples in, some out
    assert float((ce - threshold).abs().min()) > 1e-3  # none at the edge
    loss = objective_of(method)
    # float64: the same n products summed in another order, over n: ~1e-15
    torch.testing.assert_close(loss(logits, y), (v * ce).mean(), rtol=1e-12, atol=0)
    assert method.threshold == start  # a loss evaluation moves no state
    if epoch == 5:  # v is 0/1, locally constant: central differences see v·∇CE
        assert gradient_is_exact(lambda z: loss(z, y), logits)
    # the gradient is that of Σ v_i CE_i / n with v held fixed (no gradient through v, as
    # the authors' py_func sampling of v has none): same float64 ops, ~1e-16
    z = logits.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(loss(z, y), z)
    (want,) = torch.autograd.grad((v * F.cross_entropy(z, y, reduction="none")).mean(), z)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-16)


def test_a_hand_computed_case():
    # percentile 0.5, decay 0.5, 10 epochs, epoch 5 (50%: self-paced).
    # Step 1, losses (1, 2, 4): from the top (4, 2, 1), index round(2·0.5) = 1: 2.
    #   λ = 0.5·0 + 0.5·2 = 1; v = 1[ℓ − 1 <= 0] = (1, 0, 0); loss (1·1)/3 = 0.333333333333.
    # Step 2, losses (0.5, 3, 1): from the top (3, 1, 0.5), index 1: 1.
    #   λ = 0.5·1 + 0.5·1 = 1; v = (1, 0, 1); loss (0.5 + 1)/3 = 0.5.
    # Epoch 9 (90%: soft), losses (0.5, 1.5, 3), from the top index 1: 1.5,
    #   λ = 0.5·1 + 0.5·1.5 = 1.25; v = clip(1 − (ℓ − 1.25), 0, 1) = (1, 0.75, 0);
    #   loss (0.5 + 1.125)/3 = 0.541666666667.
    # Epoch 1 (10%: burn-in), same losses: λ = 0.5·1.25 + 0.5·1.5 = 1.375, v = 1, loss 5/3.
    _, _, method = _mentornet(percentile=0.5, decay=0.5, epochs=10)
    y = torch.zeros(3, dtype=torch.long)
    cases = [
        (5, (1.0, 2.0, 4.0), 1.0, (1.0, 0.0, 0.0), 1 / 3),
        (5, (0.5, 3.0, 1.0), 1.0, (1.0, 0.0, 1.0), 0.5),
        (9, (0.5, 1.5, 3.0), 1.25, (1.0, 0.75, 0.0), 0.541666666667),
        (1, (0.5, 1.5, 3.0), 1.375, (1.0, 1.0, 1.0), 5 / 3),
    ]
    for epoch, losses, threshold, v, value in cases:
        method.begin_epoch(epoch)
        losses = torch.tensor(losses, dtype=torch.float64)
        loss, weights = method.objective(None, losses, y)  # logits unused
        got_threshold, _ = method.weigh(losses)
        assert got_threshold == threshold  # sums of halves of dyadic numbers: exact
        assert weights.tolist() == list(v)
        # three products summed and divided by 3: a few roundings of numbers below 3
        torch.testing.assert_close(
            loss, torch.tensor(value, dtype=torch.float64), atol=1e-11, rtol=0
        )
        method.threshold = got_threshold  # what a successful step keeps


def test_planted_bugs_give_other_values():
    _, _, method = _mentornet(percentile=0.7, decay=0.5, epochs=10)
    method.begin_epoch(5)
    method.threshold = 0.8
    logits, y = fixed_logits(n=12)
    ce = F.cross_entropy(logits, y, reduction="none")
    got = objective_of(method)(logits, y)
    want = (vstar(ce, 0.4 + 0.5 * tf_percentile(ce.tolist(), 0.7), 50) * ce).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # the moving average of the batch mean instead of the percentile
    of_mean = (vstar(ce, 0.4 + 0.5 * float(ce.mean()), 50) * ce).mean()
    assert abs(float(got - of_mean)) > 1e-2
    # the threshold from the percentile alone (no moving average)
    no_ema = (vstar(ce, tf_percentile(ce.tolist(), 0.7), 50) * ce).mean()
    assert abs(float(got - no_ema)) > 1e-2
    # divided by the number of selected samples instead of the batch size
    v = vstar(ce, 0.4 + 0.5 * tf_percentile(ce.tolist(), 0.7), 50)
    assert abs(float(got - (v * ce).sum() / v.sum())) > 1e-2


def test_the_burn_in():
    _, _, method = _mentornet(epochs=10)  # the curriculum's: up to 18% of training
    burning = []
    for epoch in range(10):
        method.begin_epoch(epoch)
        burning.append(method.burning_in())
    assert burning == [True, True] + [False] * 8
    _, _, method = _mentornet(epochs=100)
    assert [method.begin_epoch(e) or method.burning_in() for e in (18, 19)] == [True, False]
    _, _, method = _mentornet(burn_in=3, epochs=10)
    assert [method.begin_epoch(e) or method.burning_in() for e in (2, 3)] == [True, False]


def test_steps_move_the_moving_average_as_the_authors():
    """Five steps through the registry, the first three in the burn-in: λ follows
    λ ← d·λ + (1 − d)·percentile of each step's reported CE, from 0, and the weights are
    the curriculum's on those losses."""
    _, _, method = _mentornet(percentile=0.7, decay=0.5, epochs=4)  # burn-in: epoch 0
    threshold, mixed = 0.0, 0
    for step, epoch in enumerate((0, 0, 0, 1, 1)):
        method.begin_epoch(epoch)
        out = method.step(*batch64(step))
        threshold = 0.5 * threshold + (1 - 0.5) * tf_percentile(out.losses.tolist(), 0.7)
        # the same Python float operations on the same float64 values: bit-identical
        assert method.threshold == threshold
        assert torch.equal(out.weights, vstar(out.losses, threshold, 25 * epoch))
        mixed += int(0 < float(out.weights.sum()) < 10)
    assert mixed == 2  # both steps after the burn-in select some samples, not all


def test_one_step_through_the_registry():
    model, _, method = _mentornet(percentile=0.6, decay=0.5, epochs=10)
    method.begin_epoch(4)
    method.load_state_dict({"steps_done": 0, "epoch": 4, "threshold": 1.2})
    x, y = batch64(0)

    def loss_of(logits, labels):
        ce = F.cross_entropy(logits, labels, reduction="none")
        threshold = 0.5 * 1.2 + 0.5 * tf_percentile(ce.detach().tolist(), 0.6)
        v = vstar(ce, threshold, 40)
        assert 0 < float(v.sum()) < len(labels)
        return (v * ce).mean()

    assert_step_matches(model, method, x, y, loss_of)


def test_resume_continues_with_the_moving_average():
    options = {"mentornet": {"percentile": 0.5}, "epochs": 4}
    uninterrupted, resumed, forgot = resumed_step_is_identical(
        "mentornet-pd", options, epoch=2, forget=lambda s: {**s, "threshold": 0.0}
    )
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k
    # with λ reset to 0 (the epoch kept) the threshold and the step differ
    assert any(not torch.equal(forgot[k], v) for k, v in uninterrupted.items())


def test_a_failed_step_keeps_the_moving_average():
    torch.manual_seed(0)
    model = make_model("mlp")
    method = MentorNetPD(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=4)
    method.step(*batch("mlp", 0))
    before = method.state_dict()
    x, y = batch("mlp", 1)
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        method.step(x, y)
    assert method.state_dict() == before


def test_it_needs_the_run_length():
    with pytest.raises(ValueError, match=r"needs options\['epochs'\]"):
        build64("mentornet-pd", model64(), {})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("percentile", 1.5, r"percentile must lie in \[0, 1\]"),
        ("ema_decay", 1.0, r"ema_decay must lie in \[0, 1\)"),
        ("burn_in_epochs", -1, "burn_in_epochs must be an epoch number"),
    ],
)
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MentorNetOptions(**{field: value})
