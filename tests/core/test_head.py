"""hypergrad="head": the virtual step of the final linear layer only, on frozen features."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nets import (
    BnCnn,
    Mlp,
    WithBuffers,
    _sgd_direction,
    random_batches,
    reference_normalize,
    reference_weights,
)
from torch import nn

import mwnet
from mwnet.cli import main

IMAGE = (3, 8, 8)


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _hooks_left(model: nn.Module) -> list[str]:
    kinds = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    return [f"{n}.{k}" for n, m in model.named_modules() for k in kinds if getattr(m, k)]


def _sgd(model: nn.Module, head_lr: float = 0.3) -> torch.optim.SGD:
    """Momentum, Nesterov, weight decay, and the head in its own group at its own lr."""
    head = {id(p) for p in model.fc.parameters()}
    return torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if id(p) not in head]},
            {"params": list(model.fc.parameters()), "lr": head_lr},
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )


def _body(model: BnCnn, x: torch.Tensor) -> torch.Tensor:
    """BnCnn's features written out by hand, on copies of the BN buffers (batch stats)."""
    h = F.conv2d(x, model.conv.weight)
    h = F.batch_norm(
        h,
        model.bn.running_mean.clone(),
        model.bn.running_var.clone(),
        model.bn.weight,
        model.bn.bias,
        training=True,
        momentum=0.1,
        eps=1e-5,
    )
    return F.relu(h).flatten(1).detach()


def _reference_head_hypergradient(model, opt, vnet, batch, normalize, virtual_step):
    """∂L_meta/∂Θ for the head-only problem, by create_graph through a manual head step."""
    x, y, xm, ym = batch
    h, hm = _body(model, x), _body(model, xm)
    w = model.fc.weight.detach().requires_grad_()
    b = model.fc.bias.detach().requires_grad_()
    theta = [t.detach().requires_grad_() for t in vnet.parameters()]
    losses = F.cross_entropy(F.linear(h, w, b), y, reduction="none")
    c = reference_normalize(reference_weights(theta, losses.detach()), normalize)
    gw, gb = torch.autograd.grad((c * losses).sum(), [w, b], create_graph=True)
    group = opt.param_groups[1]
    cfg = {"wd": group["weight_decay"], "momentum": group["momentum"], "nesterov": True}
    bufs = {
        k: opt.state[p]["momentum_buffer"]
        for k, p in (("w", model.fc.weight), ("b", model.fc.bias))
    }
    hat = []
    for name, p, g in (("w", w, gw), ("b", b, gb)):
        step = g if virtual_step == "sgd" else _sgd_direction(name, g, p, bufs, cfg, False)
        hat.append(p - group["lr"] * step)
    meta_loss = F.cross_entropy(F.linear(hm, *hat), ym)
    return _flat(torch.autograd.grad(meta_loss, theta)), meta_loss.detach()


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_head_hypergradient_matches_independent_reference(normalize, virtual_step):
    torch.manual_seed(0)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=10).double()
    opt = _sgd(model)
    rw = mwnet.MetaReweighter(
        model, opt, vnet, hypergrad="head", normalize=normalize, virtual_step=virtual_step
    )
    rw.step(*random_batches(IMAGE, 5, torch.float64, seed=1))  # momentum buffers now exist
    assert all("momentum_buffer" in opt.state[p] for p in model.fc.parameters())
    batch = random_batches(IMAGE, 5, torch.float64, seed=2)
    grads, meta_loss = rw.meta_gradient(*batch)
    want, want_loss = _reference_head_hypergradient(
        model, opt, vnet, batch, normalize, virtual_step
    )
    assert want.norm() > 0
    assert _rel(_flat(grads), want) <= 1e-10
    torch.testing.assert_close(meta_loss, want_loss, rtol=1e-12, atol=0)


def test_head_differs_from_the_exact_hypergradient_when_the_body_trains():
    """Guards the reference test against a head mode that quietly runs the exact one."""
    grads = {}
    for mode in ("head", "fast"):
        torch.manual_seed(0)
        model = BnCnn().double()
        rw = mwnet.MetaReweighter(
            model, _sgd(model), mwnet.WeightNet(hidden=10).double(), hypergrad=mode
        )
        grads[mode] = _flat(rw.meta_gradient(*random_batches(IMAGE, 5, torch.float64))[0])
    assert _rel(grads["head"], grads["fast"]) > 1e-3


@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_head_equals_fast_and_reverse_when_only_the_head_trains(normalize, virtual_step):
    """With a frozen body the restricted problem is the full one (BN on batch statistics
    and dropout in the body: the features must be exactly the real forward's)."""
    torch.manual_seed(0)
    base = BnCnn(dropout=0.3).double()
    base.conv.requires_grad_(False)
    base.bn.requires_grad_(False)
    vbase = mwnet.WeightNet(hidden=10).double()
    grads = {}
    for mode in ("head", "fast", "reverse"):
        model, vnet = copy.deepcopy(base), copy.deepcopy(vbase)
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
        rw = mwnet.MetaReweighter(
            model, opt, vnet, hypergrad=mode, normalize=normalize, virtual_step=virtual_step
        )
        torch.manual_seed(1)
        rw.step(*random_batches(IMAGE, 5, torch.float64, seed=1))
        torch.manual_seed(2)
        grads[mode] = _flat(rw.meta_gradient(*random_batches(IMAGE, 5, torch.float64, seed=2))[0])
    assert grads["reverse"].norm() > 0
    assert _rel(grads["fast"], grads["reverse"]) <= 1e-8
    assert _rel(grads["head"], grads["reverse"]) <= 1e-8


def test_buffers_move_once_and_no_hooks_are_left():
    torch.manual_seed(0)
    model = BnCnn(dropout=0.2)
    expected = copy.deepcopy(model)
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="head")
    x, y, xm, ym = random_batches(IMAGE, 5)
    rw.step(x, y, xm, ym)
    with torch.no_grad():
        expected(x)
    _assert_same(dict(model.named_buffers()), dict(expected.named_buffers()))
    assert int(model.bn.num_batches_tracked) == 1
    assert _hooks_left(model) == []
    rw.meta_gradient(x, y, xm, ym)
    assert _hooks_left(model) == []


def test_meta_gradient_changes_no_state():
    torch.manual_seed(0)
    model = BnCnn(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    rw = mwnet.MetaReweighter(model, opt, hypergrad="head", virtual_step="optimizer")
    rw.step(*random_batches(IMAGE, 5, seed=1))
    before = _state(model), _state(rw.weight_net), copy.deepcopy(opt.state_dict())
    before_vopt = copy.deepcopy(rw.weight_optimizer.state_dict())
    rw.meta_gradient(*random_batches(IMAGE, 5, seed=2))
    _assert_same(_state(model), before[0])
    _assert_same(_state(rw.weight_net), before[1])
    for k, s in before[2]["state"].items():
        assert torch.equal(opt.state_dict()["state"][k]["momentum_buffer"], s["momentum_buffer"])
    for k, s in before_vopt["state"].items():
        _assert_same(rw.weight_optimizer.state_dict()["state"][k], s)


def test_every_parameter_trains_and_extra_passes_touch_no_buffer():
    """The real update still moves the body; the no-grad meta forward runs on copies."""
    torch.manual_seed(0)
    model = WithBuffers()
    before = _state(model)
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="head")
    for i in range(3):
        result = rw.step(*random_batches((6,), 4, seed=i))
        assert result.meta_loss is not None and torch.isfinite(result.loss)
    assert rw._head.name == "lin"
    assert all(not torch.equal(v, before[k]) for k, v in model.named_parameters())
    assert int(model.calls) == 3


class _Counting(nn.Module):
    """An MLP that counts its forward calls in plain Python (copies cannot hide them)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.fc = nn.Linear(8, 4)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.fc(self.body(x))


def test_meta_interval_skips_the_meta_forward():
    torch.manual_seed(0)
    model = _Counting()
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="head", meta_interval=3
    )
    updated = []
    for i in range(7):
        before = _state(rw.weight_net)
        result = rw.step(*random_batches((6,), 4, seed=i))
        changed = not torch.equal(before["net.0.weight"], rw.weight_net.net[0].weight)
        updated.append(changed)
        assert (result.meta_loss is not None) == changed
        assert _hooks_left(model) == []
    assert updated == [True, False, False, True, False, False, True]
    assert model.forwards == 7 + 3  # one real forward per step, one meta forward per update


def test_same_seed_gives_bitwise_identical_parameters():
    def run():
        torch.manual_seed(123)
        model = BnCnn(dropout=0.3)
        rw = mwnet.MetaReweighter(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            hypergrad="head",
            virtual_step="optimizer",
            meta_interval=2,
        )
        for i in range(4):
            rw.step(*random_batches(IMAGE, 5, seed=i))
        return _state(model), _state(rw.weight_net)

    (m1, v1), (m2, v2) = run(), run()
    _assert_same(m1, m2)
    _assert_same(v1, v2)


# --- head detection ----------------------------------------------------------------------


class _SequentialHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.classifier = nn.Sequential(OrderedDict(drop=nn.Dropout(0.1), head=nn.Linear(8, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _PostProcessed(Mlp):
    """Returns a function of the last Linear's output, not the output itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


class _Copied(Mlp):
    """Returns an equal copy of the last Linear's output: still that layer's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).clone()


class _Tuple(Mlp):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out, out


class _NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, None]).mean(-1)


def _first_output_ce(out, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y, reduction="none")


def _head_rw(model: nn.Module, **kw) -> mwnet.MetaReweighter:
    return mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad="head", **kw
    )


@pytest.mark.parametrize(
    ("make", "name"),
    [(BnCnn, "fc"), (Mlp, "head"), (_SequentialHead, "classifier.head"), (_Copied, "head")],
)
def test_head_is_detected(make, name):
    torch.manual_seed(0)
    model = make()
    rw = _head_rw(model)
    shape = IMAGE if make is BnCnn else (6,)
    classes = 5 if make is BnCnn else 4
    assert rw.step(*random_batches(shape, classes)).meta_loss is not None
    assert rw._head.name == name
    assert _hooks_left(model) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_PostProcessed, r"last nn\.Linear that ran \('head'\) does not produce .* Pass head="),
        (_Tuple, r"returns a tuple or dict\)\. Pass head="),
        (_NoLinear, r"found no nn\.Linear .* pass head="),
    ],
)
def test_undetectable_head_asks_for_a_name(make, message):
    torch.manual_seed(0)
    model = make()
    rw = _head_rw(model, loss_fn=_first_output_ce)
    with pytest.raises(ValueError, match=message):
        rw.step(*random_batches((6,), 4))
    assert _hooks_left(model) == []


def test_named_head_takes_its_output_as_the_logits():
    """With head= named, a post-processed output is the user's choice: the head problem's
    losses use the layer's own output."""
    torch.manual_seed(0)
    model = _PostProcessed()
    rw = _head_rw(model, head="head")
    assert rw.step(*random_batches((6,), 4)).meta_loss is not None
    assert _hooks_left(model) == []


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ("body", r"head='body' is a Sequential, not an nn\.Linear.*'body\.0', 'head'"),
        ("body.1", "is a Tanh, not an nn.Linear"),
        ("classifier", "head='classifier' is not a module of the model"),
    ],
)
def test_named_head_must_be_a_linear_module(head, message):
    with pytest.raises(ValueError, match=message):
        _head_rw(Mlp(), head=head)


def test_head_must_be_in_the_optimizer():
    model = Mlp()
    opt = torch.optim.SGD(model.body.parameters(), lr=0.1)
    with (
        pytest.warns(UserWarning, match="not in the optimizer"),
        pytest.raises(ValueError, match=r"'head\.weight' is not in the optimizer"),
    ):
        mwnet.MetaReweighter(model, opt, hypergrad="head", head="head")
    with pytest.warns(UserWarning, match="not in the optimizer"):
        rw = mwnet.MetaReweighter(model, opt, hypergrad="head")  # detected at the first step
    with pytest.raises(ValueError, match=r"'head\.weight' is not in the optimizer"):
        rw.step(*random_batches((6,), 4))
    assert _hooks_left(model) == []


def test_head_must_be_trainable():
    model = Mlp()
    model.head.bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"'head\.bias' is frozen"):
        _head_rw(model, head="head")


def test_head_option_needs_head_mode():
    model = Mlp()
    with pytest.raises(ValueError, match="used by hypergrad='head' only"):
        mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), head="head")


def test_head_without_bias():
    torch.manual_seed(0)
    model = Mlp()
    model.head = nn.Linear(8, 4, bias=False)
    rw = _head_rw(model)
    assert rw.step(*random_batches((6,), 4)).meta_loss is not None


# --- checks ------------------------------------------------------------------------------


def test_meta_labels_out_of_range():
    x, y, xm, ym = random_batches((6,), 4)
    ym[1] = 7
    with pytest.raises(ValueError, match=r"meta labels out of range: label 7 .* \[0, 3\]"):
        _head_rw(Mlp()).step(x, y, xm, ym)


@pytest.mark.parametrize("where", ["training", "meta"])
def test_non_finite_loss_names_the_step_and_updates_nothing(where):
    torch.manual_seed(0)
    rw = _head_rw(Mlp())
    rw.step(*random_batches((6,), 4, seed=0))
    x, y, xm, ym = random_batches((6,), 4, seed=1)
    (x if where == "training" else xm)[3] = float("nan")
    before, before_v = _state(rw.model), _state(rw.weight_net)
    with pytest.raises(FloatingPointError, match=f"non-finite {where} loss at step 1"):
        rw.step(x, y, xm, ym)
    _assert_same(_state(rw.model), before)
    _assert_same(_state(rw.weight_net), before_v)
    assert _hooks_left(rw.model) == []


def test_step_under_bf16_autocast():
    torch.manual_seed(0)
    model = BnCnn()
    rw = _head_rw(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = rw.step(*random_batches(IMAGE, 5))
    assert torch.isfinite(result.loss) and result.meta_loss is not None
    assert result.weights.dtype == torch.float32


# --- benchmark ---------------------------------------------------------------------------


def test_bench_step_runs_head(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "step", "--model", "cnn_small", "--batch", "8", "--meta-batch", "8"]
    argv += ["--repeats", "2", "--warmup", "1", "--threads", "1", "--no-memory"]
    assert main([*argv, "--modes", "plain,head,fast", "--meta-interval", "2"]) == 0
    out = capsys.readouterr().out
    for mode in ("plain", "head", "fast", "head+interval(2)", "fast+interval(2)"):
        assert f"\n{mode} " in out


def test_bench_memory_measures_head() -> None:
    """The head mode's peak memory, measured as the benchmark does: in a fresh process (a
    process's peak RSS never goes down, so in this one a step's extra peak is hidden by
    earlier tests' and reads 0). A head step keeps its training forward's activations for
    the backward: the first conv's output alone is B x 32 x 28 x 28 floats, held along
    with its BatchNorm and ReLU outputs, so the peak exceeds twice that."""
    batch = 128
    src = str(Path(mwnet.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "mwnet.bench.step_memory", "--model", "cnn_small"]
    cmd += ["--mode", "head", "--batch", str(batch), "--meta-batch", "8", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = json.loads(done.stdout)["peak_bytes"]
    one_activation = batch * 32 * 28 * 28 * 4
    assert 2 * one_activation < peak < 2**31
