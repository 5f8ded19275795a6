"""The mwnet method is MetaReweighter, configured by name, and nothing else."""

from __future__ import annotations

import pytest
import torch
from method_nets import assert_same, batch, build, make_model, meta_stream, state

import mwnet
from mwnet.methods import MetaWeightNet

CASES = [
    ({}, lambda net: torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4), {}),
    (
        {
            "hypergrad": "reverse",
            "normalize": "mean",
            "virtual_step": "optimizer",
            "weight_hidden": 7,
            "weight_depth": 2,
            "weight_optimizer": "sgd",
            "weight_lr": 0.05,
            "weight_momentum": 0.8,
            "weight_nesterov": True,
            "weight_decay": 5e-4,
        },
        lambda net: torch.optim.SGD(
            net.parameters(), lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4
        ),
        {"hypergrad": "reverse", "normalize": "mean", "virtual_step": "optimizer"},
    ),
]


@pytest.mark.parametrize(("options", "make_vopt", "core_kw"), CASES)
def test_equals_using_the_reweighter_directly(options, make_vopt, core_kw):
    def via_method():
        torch.manual_seed(0)
        model = make_model("cnn", dropout=0.2)
        _, method = build("mwnet", model, "cnn", options)
        outs = [method.step(*batch("cnn", i)) for i in range(3)]
        return model, method.reweighter.weight_net, outs

    def direct():
        torch.manual_seed(0)
        model = make_model("cnn", dropout=0.2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        net = mwnet.WeightNet(options.get("weight_hidden", 100), options.get("weight_depth", 1))
        rw = mwnet.MetaReweighter(model, opt, net, make_vopt(net), **core_kw)
        meta = meta_stream("cnn")
        outs = [rw.step(*batch("cnn", i), *next(meta)) for i in range(3)]
        return model, net, outs

    (m1, v1, o1), (m2, v2, o2) = via_method(), direct()
    assert_same(state(m1), state(m2), rtol=0, atol=0)
    assert_same(state(v1), state(v2), rtol=0, atol=0)
    for a, b in zip(o1, o2, strict=True):
        assert torch.equal(a.loss, b.loss) and torch.equal(a.losses, b.losses)
        assert torch.equal(a.weights, b.weights) and torch.equal(a.meta_loss, b.meta_loss)


def test_options_reach_the_core():
    _, method = build(
        "mwnet",
        make_model("mlp"),
        "mlp",
        {
            "hypergrad": "reverse",
            "normalize": "none",
            "meta_interval": 3,
            "weight_optimizer": "sgd",
            "weight_momentum": 0.0,
        },
    )
    rw = method.reweighter
    assert (rw.hypergrad, rw.normalize, rw.meta_interval) == ("reverse", "none", 3)
    group = rw.weight_optimizer.param_groups[0]
    assert isinstance(rw.weight_optimizer, torch.optim.SGD)
    assert (group["momentum"], group["nesterov"]) == (0.0, False)  # no Nesterov without momentum


def test_meta_batches_are_drawn_only_for_weight_net_updates():
    drawn = []

    def stream():
        for i, b in enumerate(meta_stream("mlp")):
            drawn.append(i)
            yield b

    model = make_model("mlp")
    method = MetaWeightNet(
        model, torch.optim.SGD(model.parameters(), lr=0.1), stream(), meta_interval=3
    )
    metas = [method.step(*batch("mlp", i)).meta_loss for i in range(7)]
    assert [m is not None for m in metas] == [True, False, False, True, False, False, True]
    assert drawn == [0, 1, 2]


def test_weight_net_follows_the_model_dtype_and_gives_the_weighting_function():
    model = make_model("mlp", torch.float64)
    _, method = build("mwnet", model, "mlp")
    net = method.reweighter.weight_net
    assert next(net.parameters()).dtype == torch.float64
    losses = torch.linspace(0, 4, 9)
    got = method.weighting_function(losses)
    assert got.dtype == torch.float64 and got.shape == (9,) and not got.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(got, net(losses.double()), rtol=0, atol=0)
    assert bool(((got > 0) & (got < 1)).all())


def test_unknown_weight_optimizer_is_named():
    with pytest.raises(ValueError, match="weight_optimizer must be one of"):
        build("mwnet", make_model("mlp"), "mlp", {"weight_optimizer": "lamb"})


def test_a_flat_weighting_net_that_never_learns_trains_as_cross_entropy():
    """Every weight 0.5 under sum normalisation is CE's mean loss: with the weighting net's
    learning rate 0 the MW-Net run is the CE run; a default net's random slope is not."""

    def run(name, options):
        torch.manual_seed(0)
        model = make_model("mlp", torch.float64)
        _, method = build(name, model, "mlp", options)
        for i in range(3):
            method.step(*(t.double() if t.is_floating_point() else t for t in batch("mlp", i)))
        return state(model)

    ce = run("ce", {})
    flat = run("mwnet", {"weight_init": "flat", "weight_lr": 0.0, "hypergrad": "reverse"})
    default = run("mwnet", {"weight_lr": 0.0, "hypergrad": "reverse"})
    assert_same(flat, ce, rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(default[k], ce[k]) for k in ce)


def test_a_flat_weighting_net_learns_from_its_first_meta_step():
    torch.manual_seed(0)
    options = {"weight_init": "flat", "weight_decay": 0.0}  # Adam's decay would move all
    _, method = build("mwnet", make_model("mlp"), "mlp", options)
    net = method.reweighter.weight_net
    hidden = net.net[0].weight.detach().clone()
    out = method.step(*batch("mlp", 0))
    assert torch.equal(net.net[0].weight, hidden)  # a zero output layer passes no gradient down
    assert bool(net.net[-1].weight.ne(0).any())  # ...but it moves itself
    assert not torch.allclose(out.weights, out.weights[0].expand_as(out.weights))


def test_weight_init_is_checked_and_not_applied_to_a_given_net():
    with pytest.raises(ValueError, match="weight_init must be one of default, flat"):
        build("mwnet", make_model("mlp"), "mlp", {"weight_init": "zeros"})
    with pytest.raises(ValueError, match="weight_net was given"):
        MetaWeightNet(
            make_model("mlp"),
            torch.optim.SGD(make_model("mlp").parameters(), lr=0.1),
            meta_stream("mlp"),
            weight_net=mwnet.WeightNet(),
            weight_init="flat",
        )


def _smoothed(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A per-sample loss other than the default: label-smoothed cross-entropy."""
    return torch.nn.functional.cross_entropy(output, labels, reduction="none", label_smoothing=0.3)


def test_a_per_sample_loss_reaches_the_core_and_trains_on_it():
    """loss_fn is the reweighter's: the method steps as MetaReweighter(loss_fn=...) does,
    and not as it does with the default cross-entropy (so the loss was used)."""

    def run(loss_fn, direct: bool):
        torch.manual_seed(0)
        model = make_model("mlp")
        net = mwnet.WeightNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if direct:
            rw = mwnet.MetaReweighter(model, optimizer, net, loss_fn=loss_fn)
            meta = meta_stream("mlp")
            outs = [rw.step(*batch("mlp", i), *next(meta)) for i in range(3)]
        else:
            method = MetaWeightNet(
                model, optimizer, meta_stream("mlp"), weight_net=net, loss_fn=loss_fn
            )
            outs = [method.step(*batch("mlp", i)) for i in range(3)]
        return state(model), [o.loss for o in outs]

    (method_model, method_losses), (core_model, core_losses) = (
        run(_smoothed, False),
        run(_smoothed, True),
    )
    assert_same(method_model, core_model, rtol=0, atol=0)
    assert [float(a) for a in method_losses] == [float(b) for b in core_losses]
    default_model, _ = run(None, False)
    assert any(not torch.equal(method_model[k], default_model[k]) for k in default_model)


def test_a_per_sample_loss_and_label_correction_exclude_each_other():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="soft_labels sets the training loss"):
        MetaWeightNet(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            meta_stream("mlp"),
            loss_fn=_smoothed,
            soft_labels=lambda x: torch.full((len(x), 3), 1 / 3),
        )
