"""Invariants of MetaReweighter.step: exactness, no leaks, determinism, any model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import (
    BnCnn,
    Mlp,
    WithBuffers,
    random_batches,
    reference_iteration,
    reference_weights,
)
from rounding import assert_states_within_order_noise
from torch import nn

import mwnet


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
@pytest.mark.parametrize("normalize", ["sum", "sum-detached", "mean"])
def test_steps_match_independent_reference(hypergrad, virtual_step, normalize):
    """Three iterations against a hand-written functional re-implementation of the
    authors' algorithm (separate meta-model forward, second-order virtual step,
    fresh real forward, SGD with momentum and weight decay spelled out)."""
    torch.manual_seed(0)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=10).double()
    cfg = {"lr": 0.2, "momentum": 0.9, "nesterov": True, "wd": 5e-4, "vlr": 0.5}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    theta = [p.detach().clone() for p in vnet.parameters()]
    theta_before = [t.clone() for t in theta]
    momentum = {}
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        nesterov=True,
        weight_decay=cfg["wd"],
    )
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=cfg["vlr"]),
        hypergrad=hypergrad,
        normalize=normalize,
        virtual_step=virtual_step,
    )
    start = (dict(params), {k: v.clone() for k, v in buffers.items()}, list(theta))
    batches = [random_batches((3, 8, 8), 5, torch.float64, seed=i) for i in range(3)]
    for batch in batches:
        rw.step(*batch)
        params, theta = reference_iteration(
            params, buffers, momentum, theta, batch, cfg, normalize, virtual_step
        )
    # The reference again with the samples of every batch shuffled (no dropout: nothing
    # depends on their order but the order of the sums): its spread is the rounding noise
    # the package's own order of the sums may differ from it by (tests/rounding.py).
    reordered = []
    for seed in (1, 2, 3):
        r_params, r_theta = dict(start[0]), list(start[2])
        r_buffers = {k: v.clone() for k, v in start[1].items()}
        r_momentum: dict = {}
        for batch in batches:
            r_params, r_theta = reference_iteration(
                r_params,
                r_buffers,
                r_momentum,
                r_theta,
                _shuffled(batch, seed),
                cfg,
                normalize,
                virtual_step,
            )
        reordered.append({**r_params, **r_buffers, **{f"Θ{j}": t for j, t in enumerate(r_theta)}})
    got = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    got.update({f"Θ{j}": t for j, t in enumerate(vnet.parameters())})
    want = {**params, **buffers, **{f"Θ{j}": t for j, t in enumerate(theta)}}
    assert_states_within_order_noise(got, want, reordered)
    for got_t, before in zip(vnet.parameters(), theta_before, strict=True):
        # the comparison means something: every tensor of the weighting net moved
        assert (got_t.detach() - before).abs().max() > 1e-6


def _shuffled(batch, seed: int):
    """The batch with its training and its meta samples each in another order."""
    x, y, xm, ym = batch
    g = torch.Generator().manual_seed(seed)
    i, j = torch.randperm(len(y), generator=g), torch.randperm(len(ym), generator=g)
    return x[i], y[i], xm[j], ym[j]


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_buffers_move_exactly_once_per_step(hypergrad):
    torch.manual_seed(0)
    model = BnCnn(dropout=0.2)
    expected = copy.deepcopy(model)
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad=hypergrad
    )
    x, y, xm, ym = random_batches((3, 8, 8), 5)
    rw.step(x, y, xm, ym)
    with torch.no_grad():
        expected(x)  # one real forward in train mode
    _assert_same(dict(model.named_buffers()), dict(expected.named_buffers()), rtol=0, atol=0)
    assert int(model.bn.num_batches_tracked) == 1


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_meta_gradient_changes_no_state(hypergrad):
    torch.manual_seed(0)
    model = BnCnn(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    rw = mwnet.MetaReweighter(model, opt, hypergrad=hypergrad, virtual_step="optimizer")
    rw.step(*random_batches((3, 8, 8), 5, seed=1))
    before_model, before_v = _state(model), _state(rw.weight_net)
    before_opt = copy.deepcopy(opt.state_dict())
    before_vopt = copy.deepcopy(rw.weight_optimizer.state_dict())
    rw.meta_gradient(*random_batches((3, 8, 8), 5, seed=2))
    _assert_same(_state(model), before_model, rtol=0, atol=0)
    _assert_same(_state(rw.weight_net), before_v, rtol=0, atol=0)
    after_opt = opt.state_dict()
    for k, s in before_opt["state"].items():
        torch.testing.assert_close(
            after_opt["state"][k]["momentum_buffer"], s["momentum_buffer"], rtol=0, atol=0
        )
    after_vopt = rw.weight_optimizer.state_dict()["state"]
    for k, s in before_vopt["state"].items():
        _assert_same(after_vopt[k], s, rtol=0, atol=0)


class _Constant(nn.Module):
    """A weighting "net" whose output is a constant (its parameter only has zero gradient)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.p = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.full_like(losses, self.value) + 0 * self.p


@pytest.mark.parametrize(("normalize", "value"), [("mean", 1.0), ("sum", 0.3)])
@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_constant_weights_give_the_plain_step(normalize, value, hypergrad):
    torch.manual_seed(0)
    model = BnCnn().double()
    plain = copy.deepcopy(model)
    kw = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), **kw),
        _Constant(value),
        normalize=normalize,
        hypergrad=hypergrad,
    )
    plain_opt = torch.optim.SGD(plain.parameters(), **kw)
    for i in range(3):
        x, y, xm, ym = random_batches((3, 8, 8), 5, torch.float64, seed=i)
        rw.step(x, y, xm, ym)
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_opt.step()
    _assert_same(_state(model), _state(plain), rtol=1e-12, atol=1e-14)


def test_same_seed_gives_bitwise_identical_parameters():
    def run():
        torch.manual_seed(123)
        model = BnCnn(dropout=0.3)
        rw = mwnet.MetaReweighter(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            virtual_step="optimizer",
        )
        for i in range(4):
            rw.step(*random_batches((3, 8, 8), 5, seed=i))
        return _state(model), _state(rw.weight_net)

    (m1, v1), (m2, v2) = run(), run()
    _assert_same(m1, m2, rtol=0, atol=0)
    _assert_same(v1, v2, rtol=0, atol=0)


def _frozen_first_layer() -> nn.Module:
    model = Mlp()
    model.body[0].requires_grad_(False)
    return model


MODELS = {
    "mlp": (Mlp, (6,), 4),
    "cnn_bn_dropout": (lambda: BnCnn(dropout=0.3), (3, 8, 8), 5),
    "non_bn_buffers": (WithBuffers, (6,), 4),
    "frozen_layer": (_frozen_first_layer, (6,), 4),
}


@pytest.mark.parametrize("name", MODELS)
def test_any_model_trains_and_fast_matches_reverse(name):
    make, shape, classes = MODELS[name]
    torch.manual_seed(0)
    model = make().double()  # float64: float32 left fast and reverse only 50x inside 1e-4
    frozen = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    before = _state(model)
    vbase = mwnet.WeightNet().double()
    grads = {}
    for mode in ("reverse", "fast"):
        rw = mwnet.MetaReweighter(
            model, torch.optim.SGD(model.parameters(), lr=0.1), copy.deepcopy(vbase), hypergrad=mode
        )
        torch.manual_seed(5)
        grads[mode] = torch.cat(
            [
                g.flatten()
                for g in rw.meta_gradient(*random_batches(shape, classes, torch.float64))[0]
            ]
        )
    # one meta gradient, two formulas (dropout draws tie it to this order): measured within
    # 3e-17 of each other, entries up to 0.02; 1e-14 + 1e-9·|g| is 10^4 times that
    torch.testing.assert_close(grads["fast"], grads["reverse"], rtol=1e-9, atol=1e-14)
    for i in range(3):
        result = rw.step(*random_batches(shape, classes, torch.float64, seed=i))
        assert torch.isfinite(result.loss) and result.meta_loss is not None
        assert result.weights.shape == (12,) and bool(
            ((result.weights > 0) & (result.weights < 1)).all()
        )
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert set(changed) == {k for k, v in model.named_parameters() if v.requires_grad}
    for k, v in frozen.items():
        assert torch.equal(dict(model.named_parameters())[k], v)
    if name == "non_bn_buffers":
        assert int(model.calls) == 3  # meta_gradient and virtual passes never count


def test_meta_interval_updates_weight_net_every_kth_step():
    torch.manual_seed(0)
    model = Mlp()
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), meta_interval=3)
    snapshots, metas = [], []
    for i in range(7):
        snapshots.append(_state(rw.weight_net))
        metas.append(rw.step(*random_batches((6,), 4, seed=i)).meta_loss)
    snapshots.append(_state(rw.weight_net))
    updated = [
        not torch.equal(snapshots[i]["net.0.weight"], snapshots[i + 1]["net.0.weight"])
        for i in range(7)
    ]
    assert updated == [True, False, False, True, False, False, True]
    assert [m is not None for m in metas] == updated


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = Mlp()
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), meta_interval=2)
    rw.step(*random_batches((6,), 4, seed=0))
    saved_model, saved_rw = copy.deepcopy(model.state_dict()), copy.deepcopy(rw.state_dict())
    rw.step(*random_batches((6,), 4, seed=1))
    expected = _state(model)
    model.load_state_dict(saved_model)
    fresh = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), meta_interval=2
    )
    fresh.load_state_dict(saved_rw)
    assert fresh.steps_done == 1
    fresh.step(*random_batches((6,), 4, seed=1))
    _assert_same(_state(model), expected, rtol=0, atol=0)


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_step_under_bf16_autocast(hypergrad):
    """Under autocast the weighting net stays in float32 and its weights match the losses:
    the step's losses are the model's autocast cross-entropies, and its weights are the
    (updated) weighting net's float32 outputs on exactly those losses, not a bfloat16
    approximation of them."""
    torch.manual_seed(0)
    model = BnCnn()
    same_model = copy.deepcopy(model)
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad=hypergrad
    )
    theta_before = [p.detach().clone() for p in rw.weight_net.parameters()]
    x, y, xm, ym = random_batches((3, 8, 8), 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = rw.step(x, y, xm, ym)
        logits = same_model(x)  # the real forward, on an untouched copy
    assert logits.dtype == torch.bfloat16  # autocast really ran the model in bfloat16
    assert torch.isfinite(result.loss) and result.meta_loss is not None
    want_losses = F.cross_entropy(logits.float(), y, reduction="none")
    torch.testing.assert_close(result.losses, want_losses, rtol=1e-6, atol=1e-6)

    theta = [p.detach() for p in rw.weight_net.parameters()]
    assert all(p.dtype == torch.float32 for p in theta)
    assert any(not torch.equal(t, b) for t, b in zip(theta, theta_before, strict=True))
    assert result.weights.dtype == torch.float32
    want_weights = reference_weights(theta, result.losses.float())
    torch.testing.assert_close(result.weights, want_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        result.coefficients, want_weights / want_weights.sum(), rtol=1e-6, atol=1e-7
    )


def test_virtual_step_reads_the_lr_after_optimizer_load_state_dict():
    """load_state_dict replaces the optimizer's group dicts; the lr a schedule then sets in
    the new dicts must reach the virtual step (a resumed run depends on it)."""
    torch.manual_seed(0)
    batch = random_batches((6,), 4)
    model = Mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rw = mwnet.MetaReweighter(model, opt, hypergrad="reverse")
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.param_groups[0]["lr"] = 0.7
    fresh = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.7),
        copy.deepcopy(rw.weight_net),
        hypergrad="reverse",
    )
    torch.testing.assert_close(
        rw.meta_gradient(*batch)[0], fresh.meta_gradient(*batch)[0], rtol=0, atol=0
    )
