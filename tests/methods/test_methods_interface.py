"""Every method through build_method: it trains, reports the right shapes, and resumes."""

from __future__ import annotations

import copy

import pytest
import torch
from method_nets import (
    CLASSES,
    assert_same,
    batch,
    build,
    counts,
    fixed_soft_labels,
    make_model,
    state,
    step,
)
from rounding import gamma, relative_sum_bound

from mwnet.methods import LABEL_CORRECTION_METHODS, METHODS, Method, StepOutput, build_method

LEARNED = {"mwnet", "cmwnet", "mwnet-sl", "cmwnet-sl"}
WEIGHTED = {
    "class-balanced",
    "l2rw",
    "self-paced",
    "mentornet-pd",
    "mentornet-dd",
    "co-teaching",
    *LEARNED,
}
META_LOSS = {"l2rw", "mlc", *LEARNED}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", METHODS)
def test_three_steps_train_and_report(name, kind):
    torch.manual_seed(0)
    model = make_model(kind, dropout=0.2)
    before = state(model)
    _, method = build(name, model, kind)
    assert isinstance(method, Method) and method.name == name
    assert method.source(0) == "train"
    for i in range(3):
        x, y = batch(kind, i)
        out = step(method, x, y)
        assert isinstance(out, StepOutput)
        assert out.loss.shape == () and torch.isfinite(out.loss)
        assert out.losses.shape == (10,) and bool(torch.isfinite(out.losses).all())
        assert not out.loss.requires_grad and not out.losses.requires_grad
        if name in WEIGHTED:
            assert out.weights is not None and out.weights.shape == (10,)
            assert not out.weights.requires_grad
            _assert_weights_are_right(name, method, out, y)
        else:
            assert out.weights is None
        assert (out.meta_loss is not None) == (name in META_LOSS)
    assert method.steps_done == 3
    for k, v in model.named_parameters():
        assert not torch.equal(v, before[k]), f"{name}: {k} did not change"
    if kind == "cnn":
        assert int(model.bn.num_batches_tracked) == 3


def _class_balanced(counts: list[int], beta: float) -> torch.Tensor:
    """Cui et al.'s (1 - β) / (1 - β^n_c), scaled to sum to the number of classes."""
    w = torch.tensor([(1 - beta) / (1 - beta**n) for n in counts], dtype=torch.float64)
    return w * len(counts) / w.sum()


def _assert_weights_are_right(name: str, method, out, y: torch.Tensor) -> None:
    """Each method's weights are what its rule says, not merely non-negative."""
    w = out.weights
    if name == "class-balanced":  # the label's fixed weight, from the class counts
        want = _class_balanced(counts().tolist(), 0.9999)[y].to(w.dtype)
        # float64 weights rounded to w's float32 on both sides: one float32 ulp (2u) apart
        # at most, as the float64 values differ by 1e-15; a wrong β or class by 1e-2 and more
        torch.testing.assert_close(w, want, rtol=relative_sum_bound(1, w.dtype), atol=0)
        assert float(want.max() / want.min()) > 5  # the rare classes weigh far more
    elif name == "self-paced":  # epoch 0 selects the lower half of the batch by loss
        assert torch.equal(w, (out.losses <= out.losses.sort().values[4]).to(w.dtype))
        assert float(w.sum()) == 5
    elif name in ("mentornet-pd", "mentornet-dd"):  # epoch 0 of 3: burn-in, every weight 1
        assert torch.equal(w, torch.ones_like(w))
        assert method.threshold > 0  # the moving average moves in the burn-in too
    elif name == "co-teaching":  # 0/1: the samples the peer kept; every one in epoch 0
        kept = int((1 - method.rate) * len(y))
        assert method.rate == 0 and kept == len(y)
        assert bool(((w == 0) | (w == 1)).all()) and int(w.sum()) == kept
    elif name == "l2rw":  # max(-g, 0) normalised: sums to one, some samples dropped
        # n non-negative w_i = r_i / Σr, Σr in n − 1 roundings, one quotient each, summed in
        # n − 1 more: within γ_{2n−1} of 1 (float32, n = 10: 1.1e-6; measured 1.2e-7)
        one = torch.tensor(1.0, dtype=w.dtype)
        torch.testing.assert_close(w.sum(), one, rtol=0, atol=gamma(2 * w.numel() - 1, w.dtype))
        assert bool((w == 0).any()) and bool((w > 0).any()) and float(w.max()) <= 1
    else:  # the updated weighting net's V(L_i) on the reported losses, strictly in (0, 1)
        net = method.reweighter.weight_net
        with torch.no_grad():
            if name.startswith("cmwnet"):  # the curve of each label's class cluster
                want = net.curves(out.losses)[torch.arange(len(y)), net.cluster_of_class[y]]
            else:
                want = net(out.losses[:, None])[:, 0]
        # the same float32 net on the same losses (the class-aware one gathers each head's
        # column of all curves where the step may gather the head first): measured
        # bit-identical; 1e-6 is 8 ulps, room for another blocking of the hidden layer's sum
        torch.testing.assert_close(w, want, rtol=1e-6, atol=1e-7)
        assert bool(((w > 0) & (w < 1)).all())
        assert float(w.max() - w.min()) > 1e-6  # the weights depend on the losses


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_continues_identically(name):
    options = {"meta_interval": 2, "weight_optimizer": "adam"}
    torch.manual_seed(0)
    model = make_model("cnn", dropout=0.2)
    optimizer, method = build(name, model, "cnn", options)
    step(method, *batch("cnn", 0))
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), method.state_dict()))
    for i in (1, 2):
        torch.manual_seed(10 + i)
        step(method, *batch("cnn", i))
    expected = state(model), method.state_dict()

    torch.manual_seed(99)  # a fresh process: different initialisation, then the checkpoint
    fresh = make_model("cnn", dropout=0.2)
    fresh_opt, resumed = build(name, fresh, "cnn", options, meta_start=1)
    fresh.load_state_dict(saved[0])
    fresh_opt.load_state_dict(saved[1])
    resumed.load_state_dict(saved[2])
    assert resumed.steps_done == 1
    for i in (1, 2):
        torch.manual_seed(10 + i)
        step(resumed, *batch("cnn", i))
    assert_same(state(fresh), expected[0], rtol=0, atol=0)
    assert resumed.steps_done == 3
    if name in LEARNED:
        got = resumed.state_dict()
        assert_same(got["weight_net"], expected[1]["weight_net"], rtol=0, atol=0)


def test_unknown_method_lists_the_names():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="unknown method 'erm'") as err:
        build_method(
            "erm",
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            meta_batches=iter(()),
            class_counts=torch.ones(CLASSES),
            options={},
        )
    for name in METHODS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", METHODS)
def test_labels_out_of_range_give_the_core_error(name):
    torch.manual_seed(0)
    model = make_model("mlp")
    _, method = build(name, model, "mlp")
    x, y = batch("mlp", 0)
    y[3] = CLASSES
    before = state(model)
    with pytest.raises(ValueError, match=r"training labels out of range: label 5 at position 3"):
        step(method, x, y)
    assert_same(state(model), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="training batch: 10 inputs but labels of shape"):
        step(method, x, y[:4])


@pytest.mark.parametrize("name", ["l2rw", "mlc", *sorted(LEARNED)])
def test_meta_labels_out_of_range_give_the_core_error(name):
    torch.manual_seed(0)
    model = make_model("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    xm, ym = batch("mlp", 7, n=8)
    ym[0] = -1
    method = build_method(
        name,
        model=model,
        optimizer=optimizer,
        meta_batches=iter([(xm, ym)]),
        class_counts=torch.ones(CLASSES),
        options={},
        soft_labels=fixed_soft_labels if name in LABEL_CORRECTION_METHODS else None,
    )
    with pytest.raises(ValueError, match="meta labels out of range: label -1 at position 0"):
        step(method, *batch("mlp", 0))


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_inputs_stop_before_updating(name):
    torch.manual_seed(0)
    model = make_model("mlp")
    _, method = build(name, model, "mlp")
    x, y = batch("mlp", 0)
    x[2, 0] = float("nan")
    before = state(model)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 0"):
        step(method, x, y)
    assert_same(state(model), before, rtol=0, atol=0)


def test_only_the_weighting_methods_have_a_weighting_function():
    losses = torch.linspace(0, 5, 7)
    shapes = {"mwnet": (7,), "cmwnet": (7, 3), "mwnet-sl": (7,), "cmwnet-sl": (7, 3)}
    for name in METHODS:
        _, method = build(name, make_model("mlp"), "mlp")
        got = method.weighting_function(losses)
        assert (None if got is None else tuple(got.shape)) == shapes.get(name)
        assert (method.weighting_net() is None) == (name not in shapes)


@pytest.mark.parametrize("name", ["l2rw", "mlc", *sorted(LEARNED)])
def test_an_exhausted_meta_stream_is_a_clear_error(name):
    model = make_model("mlp")
    method = build_method(
        name,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options={},
        soft_labels=fixed_soft_labels if name in LABEL_CORRECTION_METHODS else None,
    )
    with pytest.raises(RuntimeError, match="meta_batches ran out"):
        step(method, *batch("mlp", 0))
