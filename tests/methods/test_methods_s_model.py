"""The S-Model: its noise layer starts at the log of the base network's confusion with the
noisy labels, trains jointly with the network, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from corruption_helpers import FixedPass, assert_same_end, tiny_config, write_fmnist
from method_nets import CLASSES, TinyMlp
from rounding import relative_sum_bound

from mwnet.methods import SModel, build_method
from mwnet.methods.corruption_estimate import noisy_label_confusion
from mwnet.run import load_checkpoint
from mwnet.train import loop
from mwnet.train.config import ConfigError

F64 = torch.float64


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


def _reference_confusion(probs: torch.Tensor, noisy: torch.Tensor, hard: bool) -> torch.Tensor:
    """θ₀[i, j]: the noisy labels j of the samples the network puts in class i, one sample
    at a time; soft (weighted by p_ti, the paper) or hard (argmax, the authors' script)."""
    k = probs.shape[1]
    totals, mass = torch.zeros(k, k, dtype=F64), torch.zeros(k, dtype=F64)
    for t in range(len(noisy)):
        for i in range(k):
            share = float(int(probs[t].argmax()) == i) if hard else probs[t, i]
            totals[i, int(noisy[t])] += share
            mass[i] += share
    theta = torch.eye(k, dtype=F64)
    for i in range(k):
        if mass[i] > 0:
            theta[i] = totals[i] / mass[i]
    return theta


def _fixed(n: int = 40, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=F64), dim=1)
    probs[:, 3] *= 1e-3  # class 3 is never anyone's argmax
    probs = probs / probs.sum(1, keepdim=True)
    return probs, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("hard", [False, True])
def test_confusion_with_the_noisy_labels(hard):
    probs, noisy = _fixed()
    got = noisy_label_confusion(probs, noisy, hard=hard)
    want = _reference_confusion(probs, noisy, hard)
    # every entry: sums of at most 40 non-negative terms, in two orders, then a division
    torch.testing.assert_close(got, want, rtol=relative_sum_bound(41, F64), atol=0)
    if hard:  # no sample predicted as class 3: its labels are taken as clean
        assert torch.equal(got[3], torch.eye(4, dtype=F64)[3])
    # planted bug: the matrix transposed ((label, prediction) instead of (prediction, label))
    assert float((want.T - got).abs().max()) > 1e-2


def _method(lr_factor: float = 2.0, confusion: str = "soft"):
    torch.manual_seed(0)
    model = TinyMlp().double()
    g = torch.Generator().manual_seed(3)
    training = FixedPass(torch.randn(30, 6, generator=g, dtype=F64), torch.arange(30) % CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    method = SModel(
        model,
        optimizer,
        training,
        CLASSES,
        epochs=1,
        lr_factor=lr_factor,
        confusion=confusion,  # type: ignore[arg-type]
    )
    return model, optimizer, training, method


@pytest.mark.parametrize("confusion", ["soft", "hard"])
def test_the_noise_layer_starts_at_the_log_of_the_confusion(confusion):
    model, optimizer, training, method = _method(confusion=confusion)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 6, generator=g, dtype=F64), torch.randint(0, CLASSES, (10,))
    method.step(x, y)  # phase 1: cross-entropy; the layer has no gradient
    assert method.channel.grad is None and optimizer.state
    assert torch.equal(method.channel.detach(), torch.zeros(CLASSES, CLASSES, dtype=F64))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    method.begin_epoch(1)
    assert method.restarts_at(1) and not optimizer.state  # momentum cleared
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())  # kept
    probs = training(model, lambda z, labels: torch.softmax(z.double(), 1))
    theta0 = _reference_confusion(probs, training.labels, confusion == "hard")
    want = (theta0 + 1e-8).log()
    # θ₀ as above (2·γ_31 relative), then a sum and a log, each one more rounding; log's
    # absolute error is the relative error of its argument
    bound = relative_sum_bound(33, F64)
    torch.testing.assert_close(method.channel.detach(), want, rtol=bound, atol=bound)
    group = optimizer.param_groups[1]
    assert group["params"] == [method.channel]
    assert (group["lr"], group["weight_decay"]) == (0.5 * 2.0, 0.0)


def test_one_step_trains_the_network_and_the_layer_jointly():
    model, _, _, method = _method(lr_factor=2.0)
    method.begin_epoch(1)
    with torch.no_grad():  # a layer off its start, so that its gradient is not special
        method.channel.add_(0.3 * torch.randn(CLASSES, CLASSES, dtype=F64))
    net = TinyMlp().double()
    net.load_state_dict(model.state_dict())
    w = method.channel.detach().clone().requires_grad_()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(10, 6, generator=g, dtype=F64), torch.randint(0, CLASSES, (10,))
    out = method.step(x, y)

    p = torch.softmax(net(x), 1)
    theta = torch.softmax(w, 1)  # rows: p(noisy label | true class)
    per_sample = [-(p[t] * theta[:, y[t]]).sum().log() for t in range(10)]
    loss = torch.stack(per_sample).mean()
    params = list(net.parameters())
    *grads, grad_w = torch.autograd.grad(loss, [*params, w])
    # the first step after the momentum was cleared: θ − lr·(g + decay·θ); the layer at
    # twice the learning rate and without decay
    for (name, param), grad in zip(net.named_parameters(), grads, strict=True):
        want = param.detach() - 0.5 * (grad + 1e-3 * param.detach())
        # a few dozen roundings of terms <= 3; a wrong loss or learning rate moves the
        # parameters by 1e-4 and more
        torch.testing.assert_close(model.state_dict()[name], want, rtol=1e-13, atol=1e-13)
    want_w = w.detach() - 1.0 * grad_w
    torch.testing.assert_close(method.channel.detach(), want_w, rtol=1e-13, atol=1e-13)
    assert float(grad_w.abs().max()) > 1e-3  # the layer did learn something
    torch.testing.assert_close(out.loss, loss.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(out.losses, F.cross_entropy(net(x), y, reduction="none").detach())
    # planted bug: the layer transposed (θ[y, :] instead of θ[:, y]) is another loss
    wrong = torch.stack([-(p[t] * theta[y[t], :]).sum().log() for t in range(10)]).mean()
    assert abs(float(wrong.detach() - loss.detach())) > 1e-3


def test_state_round_trip_and_bad_options():
    model, optimizer, _, method = _method()
    method.begin_epoch(1)
    saved = method.state_dict()
    _, _, _, fresh = _method()
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.channel, method.channel)
    assert torch.equal(fresh.initial_confusion, method.initial_confusion)
    with pytest.raises(ValueError, match="lr_factor must be > 0"):
        SModel(model, optimizer, None, CLASSES, epochs=1, lr_factor=0)
    with pytest.raises(ValueError, match="estimate_epochs >= 1"):
        SModel(model, optimizer, None, CLASSES, epochs=None)
    built = build_method(
        "s-model",
        model=model,
        optimizer=optimizer,
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options={"epochs": 3},
    )
    assert built.extra_epochs == 3
    with pytest.raises(ValueError, match="pass over the training set"):
        built.begin_epoch(3)


def test_config_refuses_bad_s_model_options(fmnist_root, tmp_path):
    for extra, message in (
        ("method.s_model.lr_factor=0", "lr_factor must be > 0"),
        ("method.s_model.estimate_epochs=-2", "estimate_epochs must be >= 0"),
        ("method.s_model.confusion=argmax", "one of soft, hard"),
    ):
        with pytest.raises(ConfigError, match=message):
            tiny_config(fmnist_root, tmp_path, "s-model", extra)


def test_through_the_loop_the_layer_trains_and_resumes_exactly(fmnist_root, tmp_path):
    extra = ("method.s_model.lr_factor=10",)
    cfg = tiny_config(fmnist_root, tmp_path, "s-model", "name=w", *extra)
    whole, whole_dir = loop.start(cfg, quiet=True)
    method, model, optimizer = whole.exp.method, whole.exp.model, whole.exp.optimizer
    seen: dict = {"lrs": []}
    begin, step = method.begin_epoch, method.step

    def begin_epoch(epoch: int) -> None:
        if epoch == 2:
            seen["probs"] = method.training(model, lambda z, y: torch.softmax(z.double(), 1))
            seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        begin(epoch)
        if epoch == 2:
            seen["after"] = {k: v.clone() for k, v in model.state_dict().items()}

    def recorded_step(x, y, index=None):
        seen["lrs"].append([g["lr"] for g in optimizer.param_groups])
        return step(x, y, index)

    method.begin_epoch, method.step = begin_epoch, recorded_step
    whole.fit()
    assert whole.exp.total_epochs == 4
    assert all(torch.equal(seen["after"][k], v) for k, v in seen["before"].items())
    per_epoch = len(seen["lrs"]) // 4
    firsts = [seen["lrs"][i * per_epoch] for i in range(4)]
    want = [[lr, 10 * lr] for lr in (0.1, 0.01, 0.1, 0.01)]  # the layer follows the schedule
    assert firsts == [pytest.approx(pair, rel=1e-12) for pair in want]
    assert torch.equal(method.training.labels, whole.exp.data.train_labels)
    theta0 = _reference_confusion(seen["probs"], method.training.labels, hard=False)
    torch.testing.assert_close(
        method.initial_confusion, theta0, rtol=relative_sum_bound(101, F64), atol=0
    )
    start = (method.initial_confusion + 1e-8).log().float()
    assert float((method.channel.detach() - start).abs().max()) > 1e-4  # it trained

    for stop in (2, 3):  # exactly at E, and within the second phase
        cut = tiny_config(fmnist_root, tmp_path, "s-model", f"name=cut{stop}", *extra)
        trainer, cut_dir = loop.start(cut, quiet=True)
        trainer.fit(stop_after=stop)
        trainer.close()
        loop.resume(cut_dir, quiet=True).fit()
        end = assert_same_end(whole_dir, cut_dir)
        assert torch.equal(end["method"]["channel"], method.channel.detach())
    saved = load_checkpoint(whole_dir / "checkpoint.pt")["optimizer"]
    w_index = len(list(model.parameters()))  # the layer's group comes after the model's
    assert saved["param_groups"][1]["params"] == [w_index]
    assert saved["state"][w_index]["momentum_buffer"].shape == (10, 10)
