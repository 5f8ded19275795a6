"""Co-teaching (Han et al., 2018): one step against a reference written from the authors'
``loss_coteaching``, their forget-rate schedule, planted bugs that the comparison catches,
an exact resume through the loop, and a run and a comparison from the command line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_nets import CLASSES, TinyBnCnn, TinyMlp, batch, build, new_network_like, state
from rounding import gamma, unit_roundoff
from same_state import assert_identical

from mwnet.cli import main
from mwnet.methods import build_method
from mwnet.methods.co_teaching import CoTeaching, forget_rate_at
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

N = 20
LR, MOMENTUM, DECAY = 0.05, 0.9, 5e-4


# -- the reference -----------------------------------------------------------------------
def authors_rate_schedule(
    forget_rate: float, n_epoch: int, num_gradual: int, exponent: float
) -> np.ndarray:
    """``rate_schedule`` as the authors' main.py builds it."""
    schedule = np.ones(n_epoch) * forget_rate
    schedule[:num_gradual] = np.linspace(0, forget_rate**exponent, num_gradual)
    return schedule


def authors_losses(
    logits_1: torch.Tensor,
    logits_2: torch.Tensor,
    t: torch.Tensor,
    forget_rate: float,
    *,
    own_pick: bool = False,
    keep_forget_share: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two networks' losses as the authors' ``loss_coteaching`` forms them: each
    network's per-sample losses sorted (NumPy's argsort), the first ``int((1 - τ) n)``
    indices of network 1's sort train network 2 and those of network 2's train network 1,
    each on the mean cross-entropy over them. (The authors divide that mean once more by
    the number kept, a scale Adam ignores; mwnet keeps the mean: see CoTeaching's
    docstring.) ``own_pick`` and ``keep_forget_share`` plant two bugs: each network
    trained on its own small-loss samples; ``int(τ n)`` samples kept."""
    loss_1 = F.cross_entropy(logits_1, t, reduction="none")
    loss_2 = F.cross_entropy(logits_2, t, reduction="none")
    ind_1_sorted = np.argsort(loss_1.detach().numpy())
    ind_2_sorted = np.argsort(loss_2.detach().numpy())
    share = forget_rate if keep_forget_share else 1 - forget_rate
    num_remember = int(share * len(loss_1))
    ind_1_update = torch.from_numpy(ind_1_sorted[:num_remember])
    ind_2_update = torch.from_numpy(ind_2_sorted[:num_remember])
    if own_pick:
        ind_1_update, ind_2_update = ind_2_update, ind_1_update
    loss_1_update = F.cross_entropy(logits_1[ind_2_update], t[ind_2_update])
    loss_2_update = F.cross_entropy(logits_2[ind_1_update], t[ind_1_update])
    return loss_1_update, loss_2_update


def sgd_first_step(
    net: torch.nn.Module, loss: torch.Tensor, lr: float
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """torch's SGD with momentum and weight decay, first step (the buffer is the
    decayed gradient): the parameters after it, and the step's size per entry."""
    names, params = zip(*net.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    after, size = {}, {}
    for name, p, g in zip(names, params, grads, strict=True):
        d = g + DECAY * p.detach()
        after[name] = p.detach() - lr * d
        size[name] = lr * d.abs()
    return after, size


def per_sample_gradient_mass(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, keep: int
) -> dict[str, torch.Tensor]:
    """Σ_i |∇ L_i / keep| over the kept rows, entrywise: what bounds the rounding of a sum
    of those gradients in another order."""
    mass = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for i in rows.tolist():
        loss = F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]) / keep
        grads = torch.autograd.grad(loss, list(net.parameters()))
        for name, g in zip(mass, grads, strict=True):
            mass[name] += g.abs()
    return mass


def _nets(seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return TinyMlp().double(), TinyMlp().double()


def _co_teaching(
    model: torch.nn.Module, peer: torch.nn.Module, forget_rate: float, **options
) -> CoTeaching:
    """The method at a constant forget rate (``num_gradual=0``), the loop's optimizer set
    to another learning rate than the peer's was built with (the peer must follow it)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=MOMENTUM, weight_decay=DECAY)
    peer_optimizer = torch.optim.SGD(
        peer.parameters(), lr=0.5, momentum=MOMENTUM, weight_decay=DECAY
    )
    method = CoTeaching(
        model,
        optimizer,
        peer,
        peer_optimizer,
        forget_rate=forget_rate,
        **{"num_gradual": 0, **options},
    )
    for group in optimizer.param_groups:
        group["lr"] = LR  # as the loop's schedule does between epochs
    return method


def _expected(
    seed: int, x: torch.Tensor, y: torch.Tensor, forget_rate: float, **bug: bool
) -> tuple[dict, dict, dict, dict]:
    """The reference's parameters of both networks after one step from the nets of
    ``seed``, and a bound on each entry's distance from another order of the same sums."""
    net_1, net_2 = _nets(seed)
    loss_1, loss_2 = authors_losses(net_1(x), net_2(x), y, forget_rate, **bug)
    after_1, size_1 = sgd_first_step(net_1, loss_1, LR)
    after_2, size_2 = sgd_first_step(net_2, loss_2, LR)
    keep = int((1 - forget_rate) * len(y))
    picks = [
        torch.from_numpy(np.argsort(F.cross_entropy(n(x), y, reduction="none").detach().numpy()))
        for n in (net_1, net_2)
    ]
    mass_1 = per_sample_gradient_mass(net_1, x, y, picks[1][:keep], keep)
    mass_2 = per_sample_gradient_mass(net_2, x, y, picks[0][:keep], keep)
    # Both sides compute the same float64 logits and per-sample losses; the gradients are
    # sums over the batch's samples in another order (a 0/1-weighted dot over all n, or a
    # mean over the kept rows): 2·γ_n·Σ|terms| apart at most (Higham §4.2), times the
    # learning rate. The update p − lr·(g + λp) itself rounds differently (torch's foreach
    # kernel vs these three operations): 4 ulps (8u) of |p| + the step's size.
    u, ulp = 2 * gamma(len(y), torch.float64), unit_roundoff(torch.float64)

    def bound(net, mass, size):
        return {
            k: LR * u * mass[k] + 8 * ulp * (p.detach().abs() + size[k])
            for k, p in net.named_parameters()
        }

    return after_1, after_2, bound(net_1, mass_1, size_1), bound(net_2, mass_2, size_2)


def _step(seed: int, x: torch.Tensor, y: torch.Tensor, forget_rate: float):
    model, peer = _nets(seed)
    method = _co_teaching(model, peer, forget_rate)
    out = method.step(x, y)
    return method, out


def _distance(got: dict, want: dict, bound: dict) -> float:
    """The largest ratio of an entry's distance to its bound (<= 1: within rounding)."""
    return max(float(((got[k].detach() - want[k]).abs() / bound[k]).max()) for k in want)


# -- (a) one step against the authors' loss_coteaching ------------------------------------
def test_one_step_updates_both_networks_as_the_authors_loss_does():
    x, y = batch("mlp", 3, n=N, dtype=torch.float64)
    forget_rate = 0.35  # keeps int(0.65 · 20) = 13
    method, out = _step(0, x, y, forget_rate)
    want_1, want_2, bound_1, bound_2 = _expected(0, x, y, forget_rate)
    model_params = dict(method.model.named_parameters())
    peer_params = dict(method.peer.named_parameters())
    assert _distance(model_params, want_1, bound_1) <= 1
    assert _distance(peer_params, want_2, bound_2) <= 1
    # the step reports network 1: its losses before the update, and the samples it kept
    model_0, peer_0 = _nets(0)
    losses_0 = F.cross_entropy(model_0(x), y, reduction="none").detach()
    peer_losses_0 = F.cross_entropy(peer_0(x), y, reduction="none").detach()
    assert torch.equal(out.losses, losses_0)
    kept = torch.zeros(N, dtype=torch.float64)
    kept[np.argsort(peer_losses_0.numpy())[:13]] = 1
    assert torch.equal(out.weights, kept)
    # its loss: the mean over the kept samples, 13 non-negative terms (2γ_13 relative)
    mean = losses_0[kept.bool()].mean()
    torch.testing.assert_close(out.loss, mean, rtol=2 * gamma(14, torch.float64), atol=0)
    # the two networks' small-loss sets differ here, so the exchange is visible
    own = torch.zeros(N, dtype=torch.float64)
    own[np.argsort(losses_0.numpy())[:13]] = 1
    assert not torch.equal(own, kept)
    assert method.peer_optimizer.param_groups[0]["lr"] == LR


# -- (c) planted bugs the comparison catches ----------------------------------------------
@pytest.mark.parametrize("bug", ["own_pick", "keep_forget_share"])
def test_planted_bugs_land_far_outside_the_bound(bug):
    x, y = batch("mlp", 3, n=N, dtype=torch.float64)
    forget_rate = 0.35
    method, _ = _step(0, x, y, forget_rate)
    wrong_1, wrong_2, bound_1, bound_2 = _expected(0, x, y, forget_rate, **{bug: True})
    # a bug moves some entry by 1e6 bounds and more: the test above would fail on it
    assert _distance(dict(method.model.named_parameters()), wrong_1, bound_1) > 1e6
    assert _distance(dict(method.peer.named_parameters()), wrong_2, bound_2) > 1e6


def test_the_authors_literal_scale_would_be_another_update():
    """The authors' loss is the mean divided once more by the number kept; under SGD that
    is a 13 times smaller step, which the bound tells apart (a stated departure)."""
    x, y = batch("mlp", 3, n=N, dtype=torch.float64)
    method, _ = _step(0, x, y, 0.35)
    net_1, net_2 = _nets(0)
    loss_1, _ = authors_losses(net_1(x), net_2(x), y, 0.35)
    literal, _ = sgd_first_step(net_1, loss_1 / 13, LR)
    _, _, bound_1, _ = _expected(0, x, y, 0.35)
    assert _distance(dict(method.model.named_parameters()), literal, bound_1) > 1e6


def test_the_peer_follows_the_loops_learning_rate():
    """Built at lr 0.5 and left there, the peer would step ten times as far."""
    x, y = batch("mlp", 3, n=N, dtype=torch.float64)
    method, _ = _step(0, x, y, 0.35)
    net_1, net_2 = _nets(0)
    _, loss_2 = authors_losses(net_1(x), net_2(x), y, 0.35)
    stale, _ = sgd_first_step(net_2, loss_2, 0.5)
    _, _, _, bound_2 = _expected(0, x, y, 0.35)
    assert _distance(dict(method.peer.named_parameters()), stale, bound_2) > 1e6


# -- (b) the forget-rate schedule ---------------------------------------------------------
SCHEDULES = [  # (forget_rate, n_epoch, num_gradual, exponent)
    (0.2, 200, 10, 1.0),  # the authors' defaults
    (0.45, 40, 5, 0.5),
    (0.5, 30, 15, 2.0),
    (0.3, 12, 1, 1.0),
    (0.3, 12, 0, 1.0),
    (0.8, 25, 25, 1.0),
]


def _matches_authors(schedule) -> bool:
    """Whether ``schedule(epoch, τ, T_k, c)`` is the authors' rate_schedule[epoch] for
    every epoch of every setting, exactly."""
    return all(
        schedule(e, rate, gradual, c) == want
        for rate, n_epoch, gradual, c in SCHEDULES
        for e, want in enumerate(authors_rate_schedule(rate, n_epoch, gradual, c).tolist())
    )


def test_the_forget_rate_follows_the_authors_schedule():
    assert _matches_authors(forget_rate_at)
    assert forget_rate_at(0, 0.2, 10, 1.0) == 0.0  # the first epoch keeps every sample
    assert forget_rate_at(9, 0.2, 10, 1.0) == 0.2
    # a schedule one epoch off (either way) is caught
    assert not _matches_authors(lambda e, *a: forget_rate_at(e + 1, *a))
    assert not _matches_authors(lambda e, *a: forget_rate_at(max(e - 1, 0), *a))
    with pytest.raises(ValueError, match="from 0"):
        forget_rate_at(-1, 0.2, 10, 1.0)


def test_each_epoch_keeps_the_authors_count():
    """Through the method: the step after begin_epoch(e) keeps int((1 - τ_e) · n)."""
    torch.manual_seed(1)
    method = _co_teaching(TinyMlp(), TinyMlp(), 0.5, num_gradual=5)
    schedule = authors_rate_schedule(0.5, 7, 5, 1.0)
    x, y = batch("mlp", 4, n=N)
    kept = []
    for epoch in range(7):
        method.begin_epoch(epoch)
        kept.append(int(method.step(x, y).weights.sum()))
    assert kept == [int((1 - rate) * N) for rate in schedule.tolist()]
    assert kept == [20, 17, 15, 12, 10, 10, 10]
    # a batch too small to keep int((1 - τ) n) > 0 samples keeps its smallest loss
    out = method.step(*batch("mlp", 5, n=1))
    assert out.weights.tolist() == [1.0] and torch.isfinite(out.loss)


def test_building_checks_the_options_and_needs_a_second_network():
    for options, key in (
        ({"forget_rate": 1.0}, "forget_rate"),
        ({"forget_rate": -0.1}, "forget_rate"),
        ({"num_gradual": -1}, "num_gradual"),
        ({"exponent": 0.0}, "exponent"),
    ):
        with pytest.raises(ValueError, match=f"method.co_teaching.{key}="):
            build("co-teaching", TinyMlp(), "mlp", {"co_teaching": options})
    # without new_optimizer, the peer's is the model's kind with its settings
    model = TinyMlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.8, weight_decay=1e-3)
    method = build_method(
        "co-teaching",
        model=model,
        optimizer=optimizer,
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options={},
        new_network=new_network_like(model),
    )
    assert type(method.peer_optimizer) is torch.optim.SGD
    assert method.peer_optimizer.defaults == optimizer.defaults
    assert method.peer is not model and method.networks() == {"peer": method.peer}
    with pytest.raises(ValueError, match="pass new_network="):
        build_method(
            "co-teaching",
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            meta_batches=iter(()),
            class_counts=torch.ones(CLASSES),
            options={},
        )


def test_a_failed_step_moves_neither_networks_statistics():
    torch.manual_seed(0)
    model = TinyBnCnn()
    _, method = build("co-teaching", model, "cnn")
    method.step(*batch("cnn", 0))
    x, y = batch("cnn", 1)
    x[3] = float("nan")
    before, peer_before = state(model), state(method.peer)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 1"):
        method.step(x, y)
    for now, then in ((state(model), before), (state(method.peer), peer_before)):
        assert all(torch.equal(now[k], then[k]) for k in then)


# -- (d) exact resume through the loop, (f) from the command line -------------------------
def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return _fake_data().write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=2",
        "data.batch_size=25",
        "data.augment=false",
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.lr=0.1",
        "optim.epochs=3",
        "optim.schedule=multistep",
        "optim.milestones=[2]",
        "method.name=co-teaching",
        "method.co_teaching.forget_rate=0.4",
        "method.co_teaching.num_gradual=2",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        *extra,
    ]


def config(root: Path, out: Path, *extra: str):
    return load_config(None, _overrides(root, out, *extra))


def _metrics(run_dir: Path) -> list[dict]:
    timing = ("epoch_time", "wall_time")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_a_resumed_run_is_the_uninterrupted_one_bit_for_bit(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(config(fmnist_root, tmp_path, "name=w"), quiet=True)
    whole.fit()
    cut, cut_dir = loop.start(config(fmnist_root, tmp_path, "name=c"), quiet=True)
    cut.fit(stop_after=1)  # stopped inside the forget rate's ramp
    cut.close()
    loop.resume(cut_dir, quiet=True).fit()
    assert _metrics(cut_dir) == _metrics(whole_dir)
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (whole_dir, cut_dir))
    # both networks, both optimizers, the method's epoch and steps: bit for bit
    for key in ("model", "optimizer", "method"):
        assert_identical(a[key], b[key], key)
    assert a["method"]["epoch"] == 2 and a["method"]["steps_done"] == 12
    first = next(iter(a["model"]))
    assert not torch.equal(a["method"]["peer"][first], a["model"][first])  # two networks
    # the weight of a sample is 1 where network 1 trained on it: all of them in epoch 1,
    # then int(0.6 · 25) = 15 of each batch of 25 (τ = 0.4 from the second epoch)
    rows = _metrics(whole_dir)
    assert [r["mean_weight"] for r in rows] == [1.0, 0.6, 0.6]
    # and the samples kept are mostly the clean ones (measured 0.70 vs 0.39 of 40% noise)
    assert rows[-1]["mean_weight_clean"] > rows[-1]["mean_weight_corrupted"] + 0.1


def test_train_and_compare_from_the_command_line(fmnist_root, tmp_path, capsys):
    args = _overrides(fmnist_root, tmp_path, "optim.epochs=1")
    assert main(["train", "--quiet", *args, "name=one"]) == 0
    state = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert set(state["method"]) >= {"peer", "peer_optimizer", "epoch"}
    compare = [a for a in args if not a.startswith("method.name=")]
    assert main(["compare", "--methods", "ce,co-teaching", "--jobs", "1", *compare]) == 0
    out = capsys.readouterr().out
    assert "| ce |" in out and "| co-teaching |" in out
