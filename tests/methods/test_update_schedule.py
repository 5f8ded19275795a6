"""When the weighting net learns: a schedule for the meta interval, and freezing it."""

from __future__ import annotations

import copy

import pytest
import torch
from method_nets import CLASSES, batch, make_model

import mwnet
from mwnet.methods import build_method
from mwnet.methods.meta_schedule import CURVE_LOSSES, UpdateSchedule, parse_interval_schedule
from mwnet.train.config import ConfigError, load_config

STEPS_PER_EPOCH = 4


class CountingStream:
    """Endless meta batches that count how many were drawn."""

    def __init__(self) -> None:
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        return batch("mlp", 1000 + self.drawn, n=8)


def _method(options: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = make_model("mlp")
    stream = CountingStream()
    method = build_method(
        "mwnet",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_batches=stream,
        class_counts=torch.ones(CLASSES),
        options={"weight_lr": 0.05, **options},
    )
    return model, method, stream


def _train(method, epochs: int, start: int = 0) -> list[list[bool]]:
    """``epochs`` epochs of ``STEPS_PER_EPOCH`` steps; per step, whether the weighting net
    moved (compared with its own parameters before the step)."""
    moved = []
    for epoch in range(start, start + epochs):
        method.begin_epoch(epoch)
        row = []
        for i in range(STEPS_PER_EPOCH):
            before = [p.detach().clone() for p in method.reweighter.weight_net.parameters()]
            method.step(*batch("mlp", 100 * epoch + i))
            after = list(method.reweighter.weight_net.parameters())
            row.append(any(not torch.equal(a, b) for a, b in zip(after, before, strict=True)))
        moved.append(row)
    return moved


def test_the_interval_follows_the_schedule():
    _, method, stream = _method({"meta_interval": 1, "meta_interval_schedule": "2@1,4@2"})
    moved = _train(method, 3)
    # steps 0-3 every step, 4-7 every 2nd (step index multiple of 2), 8-11 every 4th
    assert moved == [[True] * 4, [True, False, True, False], [True, False, False, False]]
    assert stream.drawn == 4 + 2 + 1  # meta batches are drawn for the updates only


def test_freezing_after_an_epoch_stops_every_meta_step():
    _, method, stream = _method({"weight_net_freeze_epoch": 2})
    moved = _train(method, 4)
    assert moved == [[True] * 4, [True] * 4, [False] * 4, [False] * 4]
    assert stream.drawn == 8
    assert method.updates.frozen_at == 2 and method.reweighter.frozen


def test_a_frozen_step_is_the_frozen_net_weighted_step():
    """After freezing, a step is what MetaReweighter(frozen=True) does with that net."""
    model, method, _ = _method({"weight_net_freeze_epoch": 1})
    _train(method, 1)
    method.begin_epoch(1)
    reference = copy.deepcopy(model)
    net = copy.deepcopy(method.reweighter.weight_net)
    frozen = mwnet.MetaReweighter(
        reference, torch.optim.SGD(reference.parameters(), lr=0.1), net, frozen=True
    )
    x, y = batch("mlp", 77)
    got = method.step(x, y)
    want = frozen.step(x, y)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    for (k, v), w in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def _curve(method) -> torch.Tensor:
    """The weighting net's V on CURVE_LOSSES, computed here from its layers."""
    net = method.reweighter.weight_net.net
    with torch.no_grad():
        return torch.sigmoid(net(CURVE_LOSSES.reshape(-1, 1))).reshape(-1)


def test_the_tolerance_rule_measures_the_curve_between_epoch_starts():
    _, method, _ = _method({"weight_net_freeze_tolerance": 1e-9})
    starts = []
    for epoch in range(3):
        starts.append(_curve(method).double())
        _train(method, 1, start=epoch)
    method.begin_epoch(3)
    want = float((_curve(method).double() - starts[2]).abs().max())
    assert want > 1e-4  # the net learned during epoch 2
    assert method.updates.moved == pytest.approx(want, rel=1e-6)
    assert method.updates.frozen_at is None and not method.reweighter.frozen


def test_a_settled_curve_freezes_the_net():
    """With a tolerance above the first epoch's movement the net freezes at epoch 1: the
    rule compares epoch starts, so it cannot freeze at the start of training."""
    _, method, stream = _method({"weight_net_freeze_tolerance": 10.0})
    moved = _train(method, 3)
    assert moved == [[True] * 4, [False] * 4, [False] * 4]
    assert method.updates.frozen_at == 1 and stream.drawn == 4


def test_the_schedule_state_survives_a_restart():
    """Frozen by the tolerance rule, saved, loaded into a fresh method: still frozen, with
    the same record; a tolerance run cut before freezing carries its last curve on."""
    _, method, _ = _method({"weight_net_freeze_tolerance": 10.0})
    _train(method, 2)
    state = copy.deepcopy(method.state_dict())
    _, fresh, stream = _method({"weight_net_freeze_tolerance": 10.0}, seed=1)
    fresh.load_state_dict(state)
    assert fresh.reweighter.frozen and fresh.updates.frozen_at == 1
    assert _train(fresh, 1, start=2) == [[False] * 4] and stream.drawn == 0
    _, cut, _ = _method({"weight_net_freeze_tolerance": 1e-9})
    _train(cut, 1)
    cut.begin_epoch(1)
    resumed_state = copy.deepcopy(cut.state_dict())
    _, resumed, _ = _method({"weight_net_freeze_tolerance": 1e-9}, seed=1)
    resumed.load_state_dict(resumed_state)
    assert torch.equal(resumed.updates.last_curve, cut.updates.last_curve)


@pytest.mark.parametrize(
    ("text", "want"),
    [(None, ()), ("", ()), ("5@3", ((3, 5),)), (" 5@2, 20@10 ", ((2, 5), (10, 20)))],
)
def test_schedule_parsing(text, want):
    assert parse_interval_schedule(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", "must have the form"),
        ("2:5", "must have the form"),
        ("x@2", "must have the form"),
        ("5@2,10@1", "epochs strictly increasing"),
        ("5@2,10@2", "epochs strictly increasing"),
        ("0@2", "intervals must be >= 1"),
    ],
)
def test_bad_schedules_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_interval_schedule(text)


def test_interval_at_each_epoch():
    rule = UpdateSchedule(1, ((2, 5), (10, 20)))
    assert [rule.interval(e) for e in (0, 1, 2, 9, 10, 30)] == [1, 1, 5, 5, 20, 20]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.mwnet.meta_interval_schedule=5"], "method.mwnet.meta_interval_schedule='5' must"),
        (["method.mwnet.freeze_epoch=0"], "method.mwnet.freeze_epoch must be >= 1"),
        (["method.mwnet.freeze_tolerance=0"], "method.mwnet.freeze_tolerance must be > 0"),
        (["method.name=ce", "method.mwnet.freeze_epoch=3"], "read by mwnet, cmwnet"),
        (
            [
                "method.mwnet.meta=false",
                "method.mwnet.net_from=x",
                "method.mwnet.meta_interval_schedule=5@1",
            ],
            "method.mwnet.meta=true",
        ),
        (["method.mwnet.partial=fc"], "method.mwnet.partial names the top of hypergrad=partial"),
        (
            ["method.mwnet.hypergrad=partial", "method.mwnet.low_memory=true"],
            "partial keeps the bottom",
        ),
        (["method.mwnet.hypergrad=partial", "method.compile=true"], "head and partial"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fmnist-flip2-40", overrides)


def test_config_reaches_the_method():
    cfg = load_config(
        "fmnist-flip2-40",
        [
            "method.mwnet.hypergrad=partial",
            "method.mwnet.partial=features.1,head",
            "method.mwnet.meta_interval_schedule=5@2",
            "method.mwnet.freeze_epoch=6",
            "method.mwnet.freeze_tolerance=0.01",
        ],
    )
    model = make_model("cnn")
    method = build_method(
        "mwnet",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_batches=iter([]),
        class_counts=torch.ones(CLASSES),
        options={"mwnet": {**cfg.method.mwnet, "partial": "bn,fc"}},
    )
    rule = method.updates
    assert (rule.interval_schedule, rule.freeze_epoch, rule.freeze_tolerance) == (
        ((2, 5),),
        6,
        0.01,
    )
    assert method.reweighter.hypergrad == "partial"
    assert method.reweighter._top.names == ["bn.weight", "bn.bias", "fc.weight", "fc.bias"]


def test_a_frozen_method_refuses_a_schedule():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="a frozen weighting net is never updated"):
        build_method(
            "mwnet",
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            meta_batches=iter([]),
            class_counts=torch.ones(CLASSES),
            options={"meta": False, "weight_net_freeze_epoch": 2},
            weight_net=mwnet.WeightNet(),
        )


def test_the_weighting_function_is_what_the_rule_compares():
    """CURVE_LOSSES through the method's weighting function: the net's own V."""
    _, method, _ = _method({"weight_net_freeze_tolerance": 1.0})
    torch.testing.assert_close(method.weighting_function(CURVE_LOSSES), _curve(method))
