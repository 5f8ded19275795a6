"""Self-paced learning: the lowest-loss share of each batch, growing with the epoch."""

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

from mwnet.methods.self_paced import SelfPacedOptions, selected_count


def reference_fraction(epoch: int, start: float, full_epoch: int) -> float:
    """The share selected at ``epoch``: linear from ``start`` at 0 to 1 at ``full_epoch``."""
    return min(1.0, start + (1.0 - start) * epoch / full_epoch)


def reference_spl(logits: torch.Tensor, y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Kumar et al.'s hard regulariser with λ between the k-th and (k+1)-th smallest loss
    (k = round(share·n)): the mean loss over the k easiest samples, picked by sorting."""
    losses = [-F.log_softmax(logits[i], dim=0)[y[i]] for i in range(len(y))]  # per sample, by hand
    k = max(1, int(fraction * len(y) + 0.5))
    easiest = sorted(range(len(y)), key=lambda i: float(losses[i].detach()))[:k]
    return sum(losses[i] for i in easiest) / k


def _spl(start=0.5, full_epoch=4, epochs=None):
    model = model64()
    options = {"self_paced": {"start_fraction": start, "full_epoch": full_epoch}}
    if epochs is not None:
        options["epochs"] = epochs
    return model, *build64("self-paced", model, options)


@pytest.mark.parametrize("epoch", [0, 1, 3, 4, 7])
def test_loss_equals_the_reference_and_its_gradient_is_exact(epoch):
    _, _, method = _spl(start=0.25, full_epoch=4)
    method.begin_epoch(epoch)
    logits, y = fixed_logits(n=12)
    ce = F.cross_entropy(logits, y, reduction="none").sort().values
    assert float((ce[1:] - ce[:-1]).min()) > 1e-3  # no two losses tie
    loss = objective_of(method)
    want = reference_spl(logits, y, reference_fraction(epoch, 0.25, 4))
    # float64: the same k losses summed in another order and divided by k: ~1e-15
    torch.testing.assert_close(loss(logits, y), want, rtol=1e-12, atol=0)
    # steps of 1e-6 never reorder losses 1e-3 apart: the selection is locally constant
    assert gradient_is_exact(lambda z: loss(z, y), logits)


def test_a_hand_computed_case():
    # Three samples, two classes, label 0, logits (a, 0) for a = ln 3, 0, −ln 3:
    # p_0 = 3/4, 1/2, 1/4 and CE = 0.287682072452, 0.693147180560, 1.386294361120.
    # start_fraction 0.5, full_epoch 2. Epoch 0: share 0.5, round(1.5) = 2 samples, the
    # two lowest: (0.287682072452 + 0.693147180560)/2 = 0.490414626506, v = (1, 1, 0).
    # Epoch 1: share 0.75, round(2.25) = 2: the same. Epoch 2: share 1, all three:
    # (0.287682072452 + 0.693147180560 + 1.386294361120)/3 = 0.789041204711.
    a = math.log(3.0)
    logits = torch.tensor([[a, 0.0], [0.0, 0.0], [-a, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    ce = F.cross_entropy(logits, y, reduction="none")
    _, _, method = _spl(start=0.5, full_epoch=2)
    cases = [(0, 0.490414626506, [1, 1, 0]), (1, 0.490414626506, [1, 1, 0])]
    cases.append((2, 0.789041204711, [1, 1, 1]))
    for epoch, value, selected in cases:
        method.begin_epoch(epoch)
        loss, v = method.objective(logits, ce, y)
        # a handful of float64 roundings of numbers below 2; the figures carry 12 decimals
        want = torch.tensor(value, dtype=torch.float64)
        torch.testing.assert_close(loss, want, rtol=0, atol=1e-11)
        assert v.tolist() == selected


def test_planted_bugs_give_other_values():
    logits, y = fixed_logits(n=10)
    _, _, method = _spl(start=0.3, full_epoch=5)
    method.begin_epoch(2)  # share 0.3 + 0.7·2/5 = 0.58: 6 of 10
    got = objective_of(method)(logits, y)
    torch.testing.assert_close(got, reference_spl(logits, y, 0.58), rtol=1e-12, atol=0)
    # the share one epoch late (0.72: 7 samples) or one early (0.44: 4): other values
    for off in (0.72, 0.44):
        assert abs(float(got - reference_spl(logits, y, off))) > 1e-3
    # the sum of the selected losses over the batch size (not their mean): another value
    assert abs(float(got - reference_spl(logits, y, 0.58) * 6 / 10)) > 1e-3


def test_the_selected_count_rounds_rather_than_overshoots():
    # 0.07·100 is 7.000000000000001 in floating point (ceil: 8), 0.58·100 is
    # 57.99999999999999 (floor: 57); rounding gives the intended 7 and 58
    assert math.ceil(0.07 * 100) == 8 and math.floor(0.58 * 100) == 57
    assert selected_count(0.07, 100) == 7 and selected_count(0.58, 100) == 58
    assert [selected_count(f, 10) for f in (0.01, 0.05, 0.5, 0.55, 1.0)] == [1, 1, 5, 6, 10]


def test_one_step_through_the_registry():
    model, _, method = _spl(start=0.4, full_epoch=6)
    method.begin_epoch(3)  # share 0.4 + 0.6·3/6 = 0.7: 7 of 10
    x, y = batch64(0)
    assert_step_matches(model, method, x, y, lambda z, t: reference_spl(z, t, 0.7))


def test_full_epoch_defaults_to_the_run_length():
    _, _, method = _spl(start=0.5, full_epoch=None, epochs=10)
    assert method.full_epoch == 10
    method.begin_epoch(5)
    assert method.fraction() == 0.75
    with pytest.raises(ValueError, match=r"or set method\.self_paced\.full_epoch"):
        _spl(full_epoch=None)


def test_resume_continues_with_the_epoch():
    options = {"self_paced": {"start_fraction": 0.3, "full_epoch": 4}}
    uninterrupted, resumed, forgot = resumed_step_is_identical(
        "self-paced", options, epoch=2, forget=lambda s: {**s, "epoch": 0}
    )
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), k
    # with its epoch reset to 0 it would select 3 of 10 instead of 7, and step elsewhere
    assert any(not torch.equal(forgot[k], v) for k, v in uninterrupted.items())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("start_fraction", 0.0, r"start_fraction must lie in \(0, 1\]"),
        ("start_fraction", 1.2, r"start_fraction must lie in \(0, 1\]"),
        ("full_epoch", -2, "full_epoch must be an epoch number"),
    ],
)
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        SelfPacedOptions(**{field: value})
