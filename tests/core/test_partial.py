"""hypergrad="partial": the virtual step of a top part of the model, the bottom's
activations reused. Exact for the restricted problem: checked against a hand-written
reference of that problem (the whole forward written out, the bottom's parameters held
fixed), central finite differences, and ``fast``/``head`` where the problems coincide."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from nets import BnCnn, _sgd_direction, random_batches, reference_class_aware_weights
from numeric import central_differences
from torch import nn

import mwnet
from mwnet.core.objective import label_correction_loss
from mwnet.core.partial import TopPart, default_top, modules_from
from mwnet.models import build

IMAGE, CLASSES = (3, 8, 8), 5
COUNTS = [500, 480, 60, 55, 5]  # three cluster heads for ClassAwareWeightNet
CLUSTERS = [0, 0, 1, 1, 2]


class LoggedDropout(nn.Module):
    """Dropout that keeps every mask it draws (from the global RNG, as F.dropout does), so
    a test can see which forward drew what and hand the masks to a reference."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = (torch.rand(x.shape, dtype=x.dtype) >= self.p).to(x.dtype) / (1 - self.p)
        self.masks.append(mask)
        return x * mask


class TwoBlocks(nn.Module):
    """block1 (conv-BN-ReLU-dropout), an in-place shift, block2 (conv-BN-ReLU-dropout),
    linear; 3x8x8 inputs, 5 classes. The shift after block1 is in place: a recording that
    kept block1's output by reference would see it shifted twice."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), LoggedDropout(dropout)
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), LoggedDropout(dropout)
        )
        self.fc = nn.Linear(4 * 6 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h += 0.5
        return self.fc(self.block2(h).flatten(1))


def _bn(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Train-mode batch norm written out: batch mean and biased variance per channel."""
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def _forward_by_hand(p: dict, x: torch.Tensor, masks: tuple) -> torch.Tensor:
    """TwoBlocks written out, with given dropout masks (None: no dropout)."""
    m1, m2 = masks
    h = torch.relu(_bn(F.conv2d(x, p["block1.0.weight"]), p["block1.1.weight"], p["block1.1.bias"]))
    h = (h if m1 is None else h * m1) + 0.5
    h = F.conv2d(h, p["block2.0.weight"], p["block2.0.bias"], padding=1)
    h = torch.relu(_bn(h, p["block2.1.weight"], p["block2.1.bias"]))
    h = h if m2 is None else h * m2
    return F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])


def _weights_by_hand(theta: list, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if len(theta) == 4 and theta[2].dim() == 2 and theta[2].shape[0] == len(set(CLUSTERS)):
        return reference_class_aware_weights(theta, losses, labels, CLUSTERS)
    w1, b1, w2, b2 = theta
    return torch.sigmoid(F.linear(F.relu(F.linear(losses[:, None], w1, b1)), w2, b2))[:, 0]


def _reference(model, opt, vnet, batch, top, masks, normalize, virtual_step, soft=None):
    """∂L_meta/∂Θ of the restricted problem, by create_graph through a hand-written
    virtual step of the ``top`` parameters only, the others held at their values.

    ``masks`` = (training masks, meta masks), each (block1's, block2's). ``soft``: the
    label-correction objective v·CE(y) + (1 − v)·CE(p) with these soft labels."""
    x, y, xm, ym = batch
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    moving = {k: v.requires_grad_() for k, v in params.items() if k in top}
    theta = [t.detach().clone().requires_grad_() for t in vnet.parameters()]
    logits = _forward_by_hand(params, x, masks[0])
    ce = F.cross_entropy(logits, y, reduction="none")
    w = _weights_by_hand(theta, ce.detach(), y)
    c = w / w.sum() if normalize == "sum" else w / len(w)
    if soft is None:
        objective = (c * ce).sum()
    else:
        ce_p = -(soft * torch.log_softmax(logits, -1)).sum(-1)
        objective = (c * ce + (1 / len(y) - c) * ce_p).sum()
    grads = torch.autograd.grad(objective, list(moving.values()), create_graph=True)
    hat = dict(params)
    group = opt.param_groups[0]
    cfg = {"wd": group["weight_decay"], "momentum": group["momentum"], "nesterov": False}
    named = dict(model.named_parameters())
    bufs = {k: opt.state[named[k]]["momentum_buffer"] for k in moving if named[k] in opt.state}
    for (k, v), g in zip(moving.items(), grads, strict=True):
        step = g if virtual_step == "sgd" else _sgd_direction(k, g, v, bufs, cfg, False)
        hat[k] = v - group["lr"] * step
    meta_loss = F.cross_entropy(_forward_by_hand(hat, xm, masks[1]), ym)
    hyper = torch.autograd.grad(meta_loss, theta)
    return torch.cat([g.reshape(-1) for g in hyper]), meta_loss.detach()


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _vnet(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "class-aware":
        net = mwnet.ClassAwareWeightNet(COUNTS, hidden=10).double()
        with torch.no_grad():
            net.heads.weight.mul_(3)  # distinct heads: a mixed-up cluster changes the answer
        return net
    return mwnet.WeightNet(hidden=10).double()


TOP_BLOCK2 = ["block2.0.weight", "block2.0.bias", "block2.1.weight", "block2.1.bias"]
TOPS = {
    "block2,fc": [*TOP_BLOCK2, "fc.weight", "fc.bias"],
    "fc": ["fc.weight", "fc.bias"],
    "block1": ["block1.0.weight", "block1.1.weight", "block1.1.bias"],  # the top feeds a block
    "block1.1,fc": ["block1.1.weight", "block1.1.bias", "fc.weight", "fc.bias"],
}


@pytest.mark.parametrize("weight_net", ["mwnet", "class-aware"])
@pytest.mark.parametrize(("virtual_step", "normalize"), [("sgd", "sum"), ("optimizer", "mean")])
@pytest.mark.parametrize("top", list(TOPS))
def test_partial_matches_hand_written_restricted_problem(top, virtual_step, normalize, weight_net):
    """BatchNorm on batch statistics, dropout in both blocks (the reference gets the masks
    the model drew: the training forward's for the training loss, the meta forward's for
    the meta loss), an in-place op after block1, momentum after one real step."""
    torch.manual_seed(0)
    model, vnet = TwoBlocks(dropout=0.3).double(), _vnet(weight_net)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, hypergrad="partial", partial=top, normalize=normalize,
        virtual_step=virtual_step,
    )  # fmt: skip
    assert sorted(rw._top.names) == sorted(TOPS[top])
    rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=1, n=20))
    drops = (model.block1[3], model.block2[3])
    for d in drops:
        d.masks.clear()
    batch = random_batches(IMAGE, CLASSES, torch.float64, seed=2, n=20)
    grads, meta_loss = rw.meta_gradient(*batch)
    train_masks = (drops[0].masks[0], drops[1].masks[0])
    meta_masks = (drops[0].masks[1], drops[1].masks[1])
    want, want_loss = _reference(
        model, opt, vnet, batch, TOPS[top], (train_masks, meta_masks), normalize, virtual_step
    )
    assert want.norm() > 0
    assert _rel(_flat(grads), want) <= 1e-10
    torch.testing.assert_close(meta_loss, want_loss, rtol=1e-12, atol=0)


def test_a_wrong_dropout_mask_would_change_the_answer():
    """Guards the reference test: with other masks for the training loss, the reference
    is a different gradient (so a JVP that drew new masks would be caught)."""
    torch.manual_seed(0)
    model, vnet = TwoBlocks(dropout=0.3).double(), _vnet("mwnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    batch = random_batches(IMAGE, CLASSES, torch.float64, seed=2, n=20)
    train = [(torch.rand(20, 4, 6, 6) >= 0.3).double() / 0.7 for _ in range(3)]
    meta = tuple((torch.rand(10, 4, 6, 6) >= 0.3).double() / 0.7 for _ in range(2))
    top = TOPS["block2,fc"]
    one, _ = _reference(model, opt, vnet, batch, top, ((train[0], train[1]), meta), "sum", "sgd")
    other, _ = _reference(model, opt, vnet, batch, top, ((train[0], train[2]), meta), "sum", "sgd")
    assert _rel(one, other) > 1e-3


def test_partial_matches_the_label_correction_reference():
    """The label-correcting objective Σ c_i A_i + mean B_i takes the same code path."""
    torch.manual_seed(0)
    model, vnet = TwoBlocks().double(), _vnet("mwnet")
    soft = torch.softmax(3 * torch.randn(20, CLASSES, dtype=torch.float64), -1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, hypergrad="partial", partial="block2,fc", normalize="mean",
        loss_fn=lambda logits, y: label_correction_loss(logits, y, soft),
        meta_loss_fn=lambda logits, y: F.cross_entropy(logits, y),
    )  # fmt: skip
    batch = random_batches(IMAGE, CLASSES, torch.float64, seed=2, n=20)
    grads, _ = rw.meta_gradient(*batch)
    none = ((None, None), (None, None))
    want, _ = _reference(model, opt, vnet, batch, TOPS["block2,fc"], none, "mean", "sgd", soft)
    plain, _ = _reference(model, opt, vnet, batch, TOPS["block2,fc"], none, "mean", "sgd")
    assert _rel(want, plain) > 1e-3  # the teacher term matters
    assert _rel(_flat(grads), want) <= 1e-10


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_partial_matches_central_finite_differences(normalize):
    """The analytic hypergradient is the derivative of the partial meta loss itself
    (float64, BatchNorm and dropout, the same masks in every evaluation)."""
    torch.manual_seed(0)
    model, vnet = TwoBlocks(dropout=0.2).double(), mwnet.WeightNet(hidden=4).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, hypergrad="partial", partial="block2,fc", normalize=normalize,
        virtual_step="optimizer",
    )  # fmt: skip
    rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=1, n=16))
    batch = random_batches(IMAGE, CLASSES, torch.float64, seed=2, n=16)

    def meta_loss() -> torch.Tensor:
        torch.manual_seed(11)
        return rw.meta_gradient(*batch)[1]

    torch.manual_seed(11)
    analytic = _flat(rw.meta_gradient(*batch)[0])
    numeric = central_differences(list(vnet.parameters()), meta_loss)
    assert numeric.norm() > 0
    assert _rel(analytic, numeric) <= 1e-6


def _run(mode: str, steps: int = 3, model=None, vnet_kind: str = "mwnet", **kw) -> dict:
    """``steps`` full iterations from a fixed state; model, weighting net and RNG after."""
    torch.manual_seed(0)
    model = copy.deepcopy(model) if model is not None else TwoBlocks(dropout=0.3).double()
    vnet = _vnet(vnet_kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, torch.optim.SGD(vnet.parameters(), lr=0.5), hypergrad=mode,
        virtual_step="optimizer", **kw,
    )  # fmt: skip
    torch.manual_seed(7)
    for i in range(steps):
        rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=i, n=20))
    return {
        **model.state_dict(),
        **{f"v.{k}": v for k, v in vnet.state_dict().items()},
        "rng": torch.get_rng_state(),
    }


def _assert_close_runs(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)


@pytest.mark.parametrize("vnet_kind", ["mwnet", "class-aware"])
def test_partial_with_every_parameter_is_fast(vnet_kind):
    """The cut at the input: the restricted problem is the whole one, computed by the same
    passes, so the runs agree to the bit (dropout, BatchNorm, momentum, RNG after)."""
    everything = ",".join(TOPS["block1"] + TOPS["block2,fc"])
    _assert_close_runs(
        _run("partial", partial=everything, vnet_kind=vnet_kind),
        _run("fast", vnet_kind=vnet_kind),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("vnet_kind", ["mwnet", "class-aware"])
def test_partial_at_the_classifier_is_head(vnet_kind):
    """The cut at the final Linear: head's problem, by other passes (reverse in head space
    there, a JVP through the replayed top here); dropout before the head in both."""
    torch.manual_seed(0)
    model = BnCnn(dropout=0.3).double()
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 1.2e-16 of each other; 1e-12 is over
    # 8000 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(
        _run("partial", model=model, partial="fc", vnet_kind=vnet_kind),
        _run("head", model=model, vnet_kind=vnet_kind),
        rtol=1e-9,
        atol=1e-12,
    )


def test_partial_differs_from_fast_when_the_bottom_trains():
    """Guards the comparisons: with a trainable bottom the restricted problem is another."""
    a = _run("partial", partial="block2,fc")
    b = _run("fast")
    assert (a["v.net.0.weight"] - b["v.net.0.weight"]).abs().max() > 1e-6


def test_the_bottom_runs_once_per_pass_it_is_needed_for():
    """Reused, not recomputed: per meta step the bottom (block1) runs in the training
    forward and in the meta batch's no-grad forward, the top (block2) in those and in the
    meta replay and the JVP; the meta batch's no-grad forward stops at the top."""
    torch.manual_seed(0)
    model = TwoBlocks(dropout=0.3).double()
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="partial",
        partial="block2,fc", meta_interval=2,
    )  # fmt: skip
    for i in range(3):  # meta steps 0 and 2, a plain step 1
        rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=i, n=8))
    assert len(model.block1[3].masks) == 2 + 1 + 2
    assert len(model.block2[3].masks) == 3 + 1 + 3


def test_running_statistics_move_once_and_nothing_is_left_behind():
    torch.manual_seed(0)
    model = TwoBlocks(dropout=0.2).double()
    expected = copy.deepcopy(model)
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="partial",
        partial="block2,fc",
    )  # fmt: skip
    x, y, xm, ym = random_batches(IMAGE, CLASSES, torch.float64, n=8)
    torch.manual_seed(5)  # the same dropout masks in the real forward and in `expected`
    rw.step(x, y, xm, ym)
    torch.manual_seed(5)
    with torch.no_grad():
        expected(x)
    for (k, v), (_, w) in zip(model.named_buffers(), expected.named_buffers(), strict=True):
        assert torch.equal(v, w), k
    assert int(model.block1[1].num_batches_tracked) == int(model.block2[1].num_batches_tracked)
    assert int(model.block2[1].num_batches_tracked) == 1
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__, f"{name}'s forward is still replaced"
        assert not module._forward_hooks and not module._forward_pre_hooks, name


def test_meta_gradient_changes_no_state():
    torch.manual_seed(0)
    model = TwoBlocks(dropout=0.2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rw = mwnet.MetaReweighter(model, opt, hypergrad="partial", partial="block2,fc")
    rw.step(*random_batches(IMAGE, CLASSES, torch.float64, seed=1, n=8))
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(rw.weight_net.state_dict())
    momentum = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    rw.meta_gradient(*random_batches(IMAGE, CLASSES, torch.float64, seed=2, n=8))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k]), k
    for k, v in rw.weight_net.state_dict().items():
        assert torch.equal(v, before[1][k]), k
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], momentum[k])


# --- choosing the top --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "top"),
    [
        ("resnet32", ["stage3", "fc"]),
        ("wrn", ["group3", "bn", "fc"]),
        ("preact_resnet18", ["stage4", "fc"]),
        ("cnn_small", ["features.1", "head"]),
        ("mlp", ["net.1", "net.3"]),  # no stages: every layer, fast's problem
    ],
)
def test_default_top_is_the_last_stage_and_the_classifier(name, top):
    model = build(name, 10, in_channels=1 if name in ("cnn_small", "mlp") else 3)
    assert default_top(model) == top
    names, params = zip(*model.named_parameters(), strict=True)
    part = TopPart(model, list(names), list(params))
    assert part.names == [n for n in names if any(n.startswith(f"{t}.") for t in top)]
    assert part.is_everything == (name == "mlp")


def test_modules_from_a_cut():
    model = build("resnet32", 10, in_channels=3)
    assert modules_from(model, "stage3") == ["stage3", "fc"]
    assert modules_from(model, "stage3.4") == ["stage3.4", "fc"]
    assert modules_from(model, "stage2.3") == ["stage2.3", "stage2.4", "stage3", "fc"]
    with pytest.raises(ValueError, match="'stage9' is not a module of the model"):
        modules_from(model, "stage9")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"partial": "block3"}, r"partial names 'block3', which holds no parameter.*'block1'"),
        ({"partial": "fc,"}, r"must name modules or parameters, comma-separated"),
        ({"partial": "fc", "hypergrad": "fast"}, r"used by hypergrad='partial' only"),
        ({"low_memory": True}, r"low_memory=True needs hypergrad='fast'.*'partial'"),
        ({"compile": True}, r"compile=True needs hypergrad='fast'"),
    ],
)
def test_bad_options_are_named(kw, message):
    model = TwoBlocks()
    kw = {"hypergrad": "partial", **kw}
    with pytest.raises(ValueError, match=message):
        mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), **kw)


def test_the_top_must_be_trainable():
    model = TwoBlocks()
    model.fc.requires_grad_(False)
    with pytest.raises(ValueError, match=r"partial names 'fc', whose parameters are all frozen"):
        mwnet.MetaReweighter(
            model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="partial", partial="fc"
        )


def test_a_forward_that_changes_its_calls_is_an_error():
    """A replay must meet the recorded calls; a forward whose calls change from one run to
    the next cannot be replayed, and says so (here every second forward skips block1, so
    the JVP's replay never reaches the training forward's recorded call)."""

    class Fickle(TwoBlocks):
        runs = 0

        def forward(self, x):
            self.runs += 1
            if self.runs % 2 == 0:
                return self.fc(self.block2(x.new_zeros(len(x), 4, 6, 6)).flatten(1))
            return super().forward(x)

    torch.manual_seed(0)
    model = Fickle().double()
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="partial",
        partial="block2,fc",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"frozen block 'block1' ran 0 time\(s\) in a replay"):
        rw.step(*random_batches(IMAGE, CLASSES, torch.float64, n=8))
