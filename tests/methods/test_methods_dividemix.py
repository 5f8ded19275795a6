"""DivideMix (Li, Socher & Hoi, 2020): the loss mixture against an EM written out here, the
semi-supervised step against the authors' ``Train_cifar.py`` formulas in float64, the
co-divide, the loop's warm-up and division epochs with an exact resume, and ``mwnet
compare`` end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_nets import CLASSES, TinyMlp
from rounding import relative_sum_bound

from mwnet.cli import main
from mwnet.methods import DivideMix, DivideMixOptions, method_descriptor
from mwnet.methods.loss_mixture import clean_probability, fit_loss_mixture, min_max_normalise
from mwnet.methods.mixmatch import (
    co_guess,
    co_refine,
    linear_rampup,
    mix,
    mixup_draws,
    mixup_lambda,
    negative_entropy,
    semi_supervised_loss,
    sharpen,
)
from mwnet.run import load_checkpoint, read_json, read_jsonl
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config
from mwnet.train.experiment import build_experiment

F64 = torch.float64

# -- (a) the loss mixture -----------------------------------------------------------


def _reference_mixture(xs: list[float], max_iter=10, tol=1e-2, reg=5e-4) -> list[float]:
    """sklearn's GaussianMixture(2, max_iter, tol, reg_covar) EM in plain Python floats,
    one sample at a time, densities by math.exp (no log-sum-exp), started from k-means
    seeded at the extremes (threshold halfway between the centres)."""
    centres = [min(xs), max(xs)]
    labels: list[int] | None = None
    while True:
        cut = (centres[0] + centres[1]) / 2
        new = [int(x > cut) for x in xs]
        if new == labels:
            break
        labels = new
        for k in (0, 1):
            members = [x for x, c in zip(xs, labels, strict=True) if c == k]
            centres[k] = sum(members) / len(members)
    resp = [[1.0 - c, float(c)] for c in labels]

    def m_step(resp):
        nk = [sum(r[k] for r in resp) + 10 * np.finfo(float).eps for k in (0, 1)]
        mu = [sum(r[k] * x for r, x in zip(resp, xs, strict=True)) / nk[k] for k in (0, 1)]
        var = [
            sum(r[k] * (x - mu[k]) ** 2 for r, x in zip(resp, xs, strict=True)) / nk[k] + reg
            for k in (0, 1)
        ]
        return mu, var, [n / sum(nk) for n in nk]

    def e_step(mu, var, w):
        resp, loglik = [], 0.0
        for x in xs:
            p = [
                w[k]
                * math.exp(-((x - mu[k]) ** 2) / (2 * var[k]))
                / math.sqrt(2 * math.pi * var[k])
                for k in (0, 1)
            ]
            resp.append([p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1])])
            loglik += math.log(p[0] + p[1])
        return loglik / len(xs), resp

    mu, var, w = m_step(resp)
    previous = -math.inf
    for _ in range(max_iter):
        loglik, resp = e_step(mu, var, w)
        mu, var, w = m_step(resp)
        if abs(loglik - previous) < tol:
            break
        previous = loglik
    _, resp = e_step(mu, var, w)
    clean = 0 if mu[0] <= mu[1] else 1
    return [r[clean] for r in resp]


def _losses(seed: int, n_clean: int = 150, n_noisy: int = 50) -> np.ndarray:
    """Loss-like values: a low-loss bulk (clean labels) and a high-loss tail (noisy ones)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.gamma(2.0, 0.2, n_clean), rng.normal(2.5, 0.6, n_noisy).clip(0)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mixture_is_the_em_written_out(seed):
    x = min_max_normalise(_losses(seed))
    fit = fit_loss_mixture(x)
    want = np.array(_reference_mixture(x.tolist()))
    # Two float64 evaluations of the same EM: every sum has at most 200 terms (γ_200 =
    # 2.2e-14 relative) and the densities differ in a few roundings (exp vs log-sum-exp);
    # ten rounds of the EM map carry that along. 1e-10 on probabilities in [0, 1] is 4
    # decades above it (measured: 1e-15); the planted bugs below move them by 0.1 and more.
    np.testing.assert_allclose(fit.clean_probability, want, rtol=0, atol=1e-10)
    assert fit.means[0] < fit.means[1]
    # planted bug: the posterior of the larger-mean (noisy) component
    wrong = 1 - want
    assert np.abs(fit.clean_probability - wrong).max() > 0.5
    # planted bug: variances without reg_covar
    no_reg = np.array(_reference_mixture(x.tolist(), reg=0.0))
    assert np.abs(no_reg - want).max() > 0.1  # measured 0.15 to 0.27


def test_two_separated_clusters_are_recovered():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0.1, 0.03, 150), rng.normal(0.8, 0.05, 50)])
    fit = fit_loss_mixture(x)
    np.testing.assert_allclose(fit.means, [0.1, 0.8], atol=0.02)  # 4 standard errors
    np.testing.assert_allclose(fit.weights, [0.75, 0.25], atol=1e-3)  # no sample straddles
    assert fit.converged and fit.iterations <= 10
    assert (fit.clean_probability[:150] > 0.999).all()
    assert (fit.clean_probability[150:] < 0.001).all()
    # a copy of the data listed noisy-first: the clean component is found by its mean
    flipped = fit_loss_mixture(x[::-1].copy())
    np.testing.assert_allclose(flipped.clean_probability, fit.clean_probability[::-1], atol=1e-12)


def test_the_losses_are_min_max_normalised_first():
    np.testing.assert_array_equal(min_max_normalise(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    losses = _losses(3)
    probability, fit = clean_probability(7.0 + 3.0 * losses)  # any scale and offset
    direct = fit_loss_mixture((losses - losses.min()) / (losses.max() - losses.min()))
    # the same EM on inputs that differ by the roundings of two affine maps (a few ulps)
    np.testing.assert_allclose(probability, direct.clean_probability, rtol=0, atol=1e-10)
    assert fit.means.min() >= 0 and fit.means.max() <= 1
    # unnormalised, reg_covar weighs differently: the division would change
    assert np.abs(fit_loss_mixture(losses).clean_probability - probability).max() > 0.1
    # all losses equal: nothing tells them apart, every sample stays labelled
    same, _ = clean_probability(np.full(10, 0.7))
    assert np.isfinite(same).all() and (same > 0.5).all()
    with pytest.raises(ValueError, match="finite"):
        clean_probability(np.array([0.1, np.nan, 0.3]))


# -- (b) MixMatch's pieces against the authors' formulas ----------------------------


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sharpening_refinement_and_guessing_are_the_authors():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]], dtype=F64)
    # p^2 renormalised: (0.04, 0.64) / 0.68, by hand
    want = torch.tensor([[0.04 / 0.68, 0.64 / 0.68], [0.5, 0.5]], dtype=F64)
    torch.testing.assert_close(sharpen(p, 0.5), want, rtol=relative_sum_bound(4, F64), atol=0)

    n, T = 6, 0.5
    views = [
        torch.softmax(torch.randn(n, CLASSES, generator=_g(i), dtype=F64), 1) for i in range(4)
    ]
    labels = torch.tensor([0, 3, 1, 4, 2, 0])
    w = torch.rand(n, generator=_g(9), dtype=F64)
    # Train_cifar.py: px = (p1 + p2) / 2; px = w*y + (1-w)*px; ptx = px**(1/T); normalise
    px = (views[0] + views[1]) / 2
    px = w[:, None] * F.one_hot(labels, CLASSES).to(F64) + (1 - w[:, None]) * px
    ptx = px ** (1 / T)
    targets_x = ptx / ptx.sum(dim=1, keepdim=True)
    # pu = the four softmaxes / 4, sharpened
    pu = (views[0] + views[1] + views[2] + views[3]) / 4
    ptu = pu ** (1 / T)
    targets_u = ptu / ptu.sum(dim=1, keepdim=True)
    # the same few float64 roundings in another order: a chain of ~10 (mean, mix, power,
    # sum of 5, quotient), so within 2γ_10 relatively
    bound = relative_sum_bound(10, F64)
    torch.testing.assert_close(co_refine(views[:2], labels, w, T), targets_x, rtol=bound, atol=0)
    torch.testing.assert_close(co_guess(views, T), targets_u, rtol=bound, atol=0)
    # planted bug: guessing with one network's views only
    assert (co_guess(views[:2], T) - targets_u).abs().max() > 1e-3


def test_mixup_and_the_loss_are_the_authors():
    bx, bu, T = 3, 4, 0.5
    rows = 2 * (bx + bu)
    inputs = torch.randn(rows, 6, generator=_g(1), dtype=F64)
    targets = torch.softmax(torch.randn(rows, CLASSES, generator=_g(2), dtype=F64) / T, 1)
    assert mixup_lambda(0.3) == 0.7 and mixup_lambda(0.8) == 0.8
    lam, idx = 0.7, torch.randperm(rows, generator=_g(3))
    mixed_input, mixed_target = mix(inputs, targets, lam, idx)
    torch.testing.assert_close(mixed_input, lam * inputs + (1 - lam) * inputs[idx], rtol=0, atol=0)
    torch.testing.assert_close(
        mixed_target, lam * targets + (1 - lam) * targets[idx], rtol=0, atol=0
    )
    logits = torch.randn(rows, CLASSES, generator=_g(4), dtype=F64)
    # Train_cifar.py's SemiLoss, linear_rampup and the prior penalty
    logits_x, logits_u = logits[: 2 * bx], logits[2 * bx :]
    t_x, t_u = mixed_target[: 2 * bx], mixed_target[2 * bx :]
    lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * t_x, dim=1))
    lu = torch.mean((torch.softmax(logits_u, dim=1) - t_u) ** 2)
    prior = torch.ones(CLASSES, dtype=F64) / CLASSES
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    labelled = torch.arange(rows) < 2 * bx
    got = semi_supervised_loss(logits, mixed_target, labelled, 2 * bx, 2 * bu, pred_mean)
    # sums of at most 2·bu·C = 40 terms in another order: 2γ_40 relative to the summed
    # magnitudes, which for these positive parts are the values themselves
    bound = relative_sum_bound(40, F64)
    torch.testing.assert_close(got.labelled, lx, rtol=bound, atol=0)
    torch.testing.assert_close(got.unlabelled, lu, rtol=bound, atol=0)
    torch.testing.assert_close(got.penalty, penalty, rtol=0, atol=0)
    assert float(penalty) > 0  # KL from the uniform prior to a non-uniform mean
    # the ramp: λ_u · clip((epoch − warm_up) / 16, 0, 1)
    assert linear_rampup(10.0, 10, 16, 25.0) == 0.0
    assert linear_rampup(18.0, 10, 16, 25.0) == 12.5
    assert linear_rampup(40.0, 10, 16, 25.0) == 25.0
    assert linear_rampup(3.0, 10, 16, 25.0) == 0.0
    # the warm-up's confidence penalty: mean Σ p log p is the authors' NegEntropy
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(
        negative_entropy(logits).mean(), torch.mean(torch.sum(p.log() * p, 1)), rtol=0, atol=0
    )


def test_mixup_draws_depend_on_seed_step_and_network_only():
    state = torch.random.get_rng_state()
    a = mixup_draws(0, 5, 1, 4.0, 12)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global draws are left alone
    assert a[0] == mixup_draws(0, 5, 1, 4.0, 12)[0]
    assert torch.equal(a[1], mixup_draws(0, 5, 1, 4.0, 12)[1])
    assert 0.5 <= a[0] < 1 and sorted(a[1].tolist()) == list(range(12))
    assert a[0] != mixup_draws(0, 5, 2, 4.0, 12)[0] != mixup_draws(0, 6, 1, 4.0, 12)[0]


# -- (b, c) one whole step against the authors' train() -----------------------------

N, D = 12, 6
BATCH = torch.tensor([3, 0, 7, 5, 9, 1, 11, 2])


class FixedSet:
    """A training-set pass over fixed inputs (the SamplePass protocol)."""

    def __init__(self) -> None:
        self.inputs = torch.randn(N, D, generator=_g(11), dtype=F64)
        self.labels = torch.randint(0, CLASSES, (N,), generator=_g(12))

    def __len__(self) -> int:
        return N

    def __call__(self, model, reduce):
        with torch.no_grad():
            return reduce(model(self.inputs), self.labels).double()


class Views:
    """A second view of samples by position, recorded for the reference."""

    def __init__(self, data: FixedSet) -> None:
        self.data = data
        self.given: list[torch.Tensor] = []

    def __call__(self, index: torch.Tensor, seed: int) -> torch.Tensor:
        noise = torch.randn(len(index), D, generator=_g(seed % 2**31), dtype=F64)
        self.given.append(self.data.inputs[index] + 0.3 * noise)
        return self.given[-1]


OPTIONS = DivideMixOptions(warmup_epochs=1, rampup_epochs=4, lambda_u=25.0)
EPOCH = 2  # one epoch after the warm-up: λ_u ramped to a quarter, 25 · (2 − 1) / 4


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model, peer = TinyMlp().double(), TinyMlp().double()
    data = FixedSet()
    views = Views(data)

    def sgd(parameters):
        return torch.optim.SGD(parameters, lr=0.1, momentum=0.9)

    method = DivideMix(
        model,
        sgd(model.parameters()),
        options=OPTIONS,
        peer=peer,
        new_optimizer=sgd,
        training_set=data,
        augment=views,
        seed=7,
    )
    return method, data, views, sgd


def _authors_step(net, net2, x, x2, labels, prob, lam, perm, lambda_u, T=0.5):
    """Train_cifar.py's train() for one batch, in its order: the labelled samples (prob >
    0.5, with w = prob) and the unlabelled ones as separate batches; returns the loss with
    ``net``'s gradient set."""
    pred = prob > 0.5
    inputs_x, inputs_x2, labels_x = x[pred], x2[pred], labels[pred]
    w_x = prob[pred].view(-1, 1)
    inputs_u, inputs_u2 = x[~pred], x2[~pred]
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, CLASSES, dtype=F64).scatter_(1, labels_x.view(-1, 1), 1)
    net.train()
    net2.eval()
    with torch.no_grad():
        pu = (
            torch.softmax(net(inputs_u), 1)
            + torch.softmax(net(inputs_u2), 1)
            + torch.softmax(net2(inputs_u), 1)
            + torch.softmax(net2(inputs_u2), 1)
        ) / 4
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        px = (torch.softmax(net(inputs_x), 1) + torch.softmax(net(inputs_x2), 1)) / 2
        px = w_x * labels_x + (1 - w_x) * px
        ptx = px ** (1 / T)
        targets_x = ptx / ptx.sum(dim=1, keepdim=True)
    net2.train()
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
    mixed_input = lam * all_inputs + (1 - lam) * all_inputs[perm]
    mixed_target = lam * all_targets + (1 - lam) * all_targets[perm]
    logits = net(mixed_input)
    logits_x, logits_u = logits[: batch_size * 2], logits[batch_size * 2 :]
    lx = -torch.mean(torch.sum(F.log_softmax(logits_x, 1) * mixed_target[: batch_size * 2], 1))
    lu = torch.mean((torch.softmax(logits_u, 1) - mixed_target[batch_size * 2 :]) ** 2)
    prior = torch.ones(CLASSES, dtype=F64) / CLASSES
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    loss = lx + lambda_u * lu + penalty
    net.zero_grad()
    loss.backward()
    return loss.detach()


def _reference(method_before, sgd, x, x2, labels, clean, *, swap=False, ramp=True):
    """Both networks' updates from the same starting networks, each from the other's
    division (``swap``: from its own, the planted bug)."""
    net1, net2 = copy.deepcopy(method_before)
    opt1, opt2 = sgd(net1.parameters()), sgd(net2.parameters())
    rows = 2 * len(labels)
    lambda_u = 25.0 * (EPOCH - 1) / 4 if ramp else 25.0
    lam1, perm1 = mixup_draws(7, 0, 1, 4.0, rows)
    lam2, perm2 = mixup_draws(7, 0, 2, 4.0, rows)
    rows_of_batch = clean[:, BATCH]
    first, second = rows_of_batch if swap else rows_of_batch.flip(0)
    with torch.no_grad():
        losses = F.cross_entropy(net1(x), labels, reduction="none")
    loss = _authors_step(net1, net2, x, x2, labels, first, lam1, perm1, lambda_u)
    _authors_step(net2, net1, x, x2, labels, second, lam2, perm2, lambda_u)
    opt1.step()
    opt2.step()
    return net1, net2, loss, losses


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((p - q).detach().abs().max()) for p, q in pairs)


def test_one_step_is_the_authors_train_for_each_network():
    method, data, views, sgd = _setup()
    before = copy.deepcopy((method.model, method.peer))
    method.begin_epoch(EPOCH)
    clean = method.clean
    # the division: each network's own losses through the mixture
    for k, net in enumerate(before):
        with torch.no_grad():
            losses = F.cross_entropy(net(data.inputs), data.labels, reduction="none")
        want, _ = clean_probability(losses.numpy())
        np.testing.assert_array_equal(clean[k].numpy(), want)
    for k in (0, 1):  # both parts present in the batch for both networks
        labelled = int((clean[k][BATCH] > 0.5).sum())
        assert 0 < labelled < len(BATCH), "the seed gives a batch without one part"
    x, y = data.inputs[BATCH], data.labels[BATCH]
    out = method.step(x, y, BATCH)
    x2 = views.given[-1]
    net1, net2, loss, losses = _reference(before, sgd, x, x2, y, clean)
    # Float64 on both sides, the same operations in other orders (means of stacked views,
    # one sum of the rows' probabilities): every sum has at most 2n·C = 80 terms, so each
    # value differs by at most 2γ_80 = 1.8e-14 relatively, and one SGD step of lr 0.1 on
    # gradients of order 1 keeps the parameters within a few of those: 1e-12 is 50x that
    # (measured: bit-identical). The planted bugs below move them by 4e-2 and 6e-3.
    bound = 1e-12
    for got, want in ((method.model, net1), (method.peer, net2)):
        for (name, a), b in zip(got.named_parameters(), want.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=bound, msg=name)
    torch.testing.assert_close(out.loss, loss, rtol=relative_sum_bound(80, F64), atol=0)
    torch.testing.assert_close(out.losses, losses, rtol=0, atol=0)
    # the weights reported are the probabilities network 1 learned from: network 2's
    torch.testing.assert_close(out.weights, clean[1][BATCH], rtol=0, atol=0)
    assert method.seen == len(BATCH) and method.steps_done == 1

    # (c) planted bug: each network learning from its own division is far from this step
    swapped, _, _, _ = _reference(before, sgd, x, x2, y, clean, swap=True)
    assert _distance(method.model, swapped) > 1e-4
    # planted bug: λ_u at full strength without its ramp
    unramped, _, _, _ = _reference(before, sgd, x, x2, y, clean, ramp=False)
    assert _distance(method.model, unramped) > 1e-4


def test_the_warm_up_trains_both_networks_with_cross_entropy():
    options = DivideMixOptions(warmup_epochs=2, penalty=True)
    torch.manual_seed(0)
    model, peer = TinyMlp().double(), TinyMlp().double()
    data = FixedSet()
    views = Views(data)
    nets = copy.deepcopy((model, peer))
    method = DivideMix(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        options=options,
        peer=peer,
        training_set=data,
        augment=views,
    )
    method.optimizer.param_groups[0]["lr"] = 0.05  # a schedule's move: the peer follows
    method.begin_epoch(1)
    assert method.clean is None  # no division in the warm-up
    x, y = data.inputs[BATCH], data.labels[BATCH]
    out = method.step(x, y, BATCH)
    assert out.weights is None
    for net, inputs in zip(nets, (x, views.given[-1]), strict=True):  # the peer: 2nd view
        logits = net(inputs)
        p = torch.softmax(logits, 1)
        # Train_cifar.py's warmup(): CEloss + NegEntropy for asymmetric noise
        loss = F.cross_entropy(logits, y) + torch.mean(torch.sum(p.log() * p, 1))
        loss.backward()
        with torch.no_grad():
            for param in net.parameters():
                param -= 0.05 * param.grad
    # one SGD step on the same float64 loss summed in another order: a few ulps
    for got, want in zip((model, peer), nets, strict=True):
        for a, b in zip(got.parameters(), want.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_a_step_without_positions_or_division_is_a_clear_error():
    method, data, _, _ = _setup()
    x, y = data.inputs[BATCH], data.labels[BATCH]
    method.epoch = EPOCH  # past the warm-up, but begin_epoch never divided
    with pytest.raises(RuntimeError, match="call begin_epoch"):
        method.step(x, y, BATCH)
    method.begin_epoch(EPOCH)
    with pytest.raises(ValueError, match="index="):
        method.step(x, y)
    bare = DivideMix(TinyMlp(), torch.optim.SGD(TinyMlp().parameters(), lr=0.1), options=OPTIONS)
    with pytest.raises(ValueError, match="training_set"):
        bare.begin_epoch(EPOCH)
    with pytest.raises(ValueError, match=r"method\.dividemix\.p_threshold must lie in"):
        DivideMix(
            TinyMlp(),
            torch.optim.SGD(TinyMlp().parameters(), lr=0.1),
            options=DivideMixOptions(p_threshold=1.0),
        )


# -- (d) through the loop -----------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    path = Path(__file__).resolve().parent.parent / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    fake_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake_data)
    return fake_data.write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)


def _config(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.download=false",
            "data.subset=100",
            "data.meta_per_class=2",
            "data.batch_size=25",
            "data.augment=true",
            "data.noise=uniform",
            "data.noise_rate=0.4",
            "model.name=mlp",
            "model.options.hidden=[8]",
            "optim.lr=0.1",
            "optim.epochs=3",
            "optim.schedule=multistep",
            "optim.milestones=[2]",
            "optim.gamma=0.1",
            "method.name=dividemix",
            "method.dividemix.warmup_epochs=1",
            "method.dividemix.rampup_epochs=2",
            "threads=1",
            "device=cpu",
            f"out_dir={out}",
            *extra,
        ],
    )


TIMING = ("epoch_time", "wall_time")


def _metrics(run_dir: Path) -> list[dict]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _same_tensors(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _same_tensors(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def test_warm_up_then_division_epochs_and_an_exact_resume(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(_config(fmnist_root, tmp_path, "name=whole"), quiet=True)
    initial_peer = copy.deepcopy(whole.exp.method.peer.state_dict())
    whole.fit()
    rows = _metrics(whole_dir)
    assert [r["mean_weight_clean"] is None for r in rows] == [True, False, False]
    state = load_checkpoint(whole_dir / "checkpoint.pt")["method"]
    assert state["clean"].shape == (2, 100) and len(state["mixtures"]) == 2
    assert state["epoch"] == 2 and state["seen"] == 100
    assert any(not torch.equal(v, state["peer"][k]) for k, v in initial_peer.items())
    peer_lr = state["peer_optimizer"]["param_groups"][0]["lr"]
    assert peer_lr == pytest.approx(0.01, rel=1e-12)  # the schedule's decay, followed

    for stop in (1, 2):  # right after the warm-up; after a division epoch
        name = f"cut{stop}"
        trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, f"name={name}"), quiet=True)
        trainer.fit(stop_after=stop)
        trainer.close()
        loop.resume(run_dir, quiet=True).fit()
        assert _metrics(run_dir) == rows
        a, b = (load_checkpoint(d / "checkpoint.pt") for d in (whole_dir, run_dir))
        _same_tensors(a["model"], b["model"], "model")
        _same_tensors(a["method"], b["method"], "method")


def test_the_second_view_is_the_runs_augmentation_drawn_afresh(fmnist_root, tmp_path):
    plain = build_experiment(_config(fmnist_root, tmp_path, "data.augment=false"))
    x, _, index = next(iter(plain.train_batches))
    views = plain.method.augment
    torch.testing.assert_close(views(index, 3), x, rtol=0, atol=0)  # no augmentation
    augmented = build_experiment(_config(fmnist_root, tmp_path)).method.augment
    a, b = augmented(index, 3), augmented(index, 4)
    torch.testing.assert_close(augmented(index, 3), a, rtol=0, atol=0)  # by seed alone
    assert not torch.equal(a, b) and not torch.equal(a, x)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_bad_options_are_config_errors(fmnist_root, tmp_path):
    with pytest.raises(ConfigError, match=r"method\.dividemix\.p_threshold must lie in \[0, 1\)"):
        loop.start(_config(fmnist_root, tmp_path, "method.dividemix.p_threshold=1.5"), quiet=True)
    knob = method_descriptor("dividemix").knob
    assert knob is not None and knob.key == "dividemix.lambda_u" and knob.values == (25.0, 0.0)


# -- (f) mwnet compare ----------------------------------------------------------------


def test_compare_trains_ce_and_dividemix(fmnist_root, tmp_path, capsys):
    args = [
        "compare",
        "--preset",
        "fmnist-flip2-40-mlp",
        "--methods",
        "ce,dividemix",
        "--jobs",
        "1",
        f"data.root={fmnist_root}",
        "data.download=false",
        "data.meta_per_class=2",
        "data.batch_size=30",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        "method.dividemix.warmup_epochs=1",
        f"out_dir={tmp_path}",
    ]
    assert main(args) == 0
    folder = tmp_path / "fmnist-flip2-40-mlp-compare-seed0"
    record = json.loads((folder / "comparison.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["ce", "dividemix"]
    assert all(r["status"] == "trained" and r["verdict"] is None for r in record["runs"])
    summary = read_json(Path(record["runs"][1]["run_dir"]) / "summary.json")
    assert summary["method"] == "dividemix" and summary["finished"]
    assert f"| dividemix | {summary['last_test_acc']:.2f} % |" in capsys.readouterr().out
