"""L2RW's example weights against a per-sample brute force and a reverse-mode reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_nets import assert_same, batch, make_model, state
from torch import nn
from torch.func import functional_call

from mwnet.methods import L2RW

LR_BODY, LR_HEAD = 0.3, 0.05


def _optimizer(model: nn.Module, momentum: float = 0.0) -> torch.optim.Optimizer:
    """Two param groups with different learning rates, so α must be read per group."""
    head = {"fc.weight", "fc.bias", "out.weight", "out.bias"}
    named = list(model.named_parameters())
    return torch.optim.SGD(
        [
            {"params": [p for n, p in named if n not in head], "lr": LR_BODY},
            {"params": [p for n, p in named if n in head], "lr": LR_HEAD},
        ],
        lr=LR_BODY,
        momentum=momentum,
    )


def _lr(name: str) -> float:
    return LR_HEAD if name.split(".")[0] in {"fc", "out"} else LR_BODY


def _problem(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = make_model(kind, torch.float64, dropout=0.3)
    x, y = batch(kind, seed, dtype=torch.float64)
    xm, ym = batch(kind, 100 + seed, n=8, dtype=torch.float64)
    return model, x, y, xm, ym


def brute_force_scores(model, x, y, xm, ym, seed):
    """g_i = −Σ_p α_p ⟨∇_p L_meta, ∇_p L_i⟩ with one autograd.grad per sample."""
    torch.manual_seed(seed)
    train_copy, meta_copy = copy.deepcopy(model), copy.deepcopy(model)
    losses = F.cross_entropy(train_copy(x), y, reduction="none")
    meta_loss = F.cross_entropy(meta_copy(xm), ym)
    names = [n for n, _ in model.named_parameters()]
    meta_grads = torch.autograd.grad(meta_loss, list(meta_copy.parameters()))
    scores = []
    for i in range(len(y)):
        grads = torch.autograd.grad(losses[i], list(train_copy.parameters()), retain_graph=True)
        scores.append(
            -sum(
                _lr(n) * torch.dot(gm.flatten(), gi.flatten())
                for n, gm, gi in zip(names, meta_grads, grads, strict=True)
            )
        )
    return torch.stack(scores), meta_loss.detach()


def reverse_scores(model, x, y, xm, ym, seed):
    """∂L_meta(θ − α ∇_θ Σ ε_i L_i)/∂ε at ε = 0, through the virtual step (create_graph)."""
    torch.manual_seed(seed)
    train_copy, meta_copy = copy.deepcopy(model), copy.deepcopy(model)
    params = dict(train_copy.named_parameters())
    losses = F.cross_entropy(train_copy(x), y, reduction="none")
    eps = torch.zeros(len(y), dtype=losses.dtype, requires_grad=True)
    grads = torch.autograd.grad((eps * losses).sum(), list(params.values()), create_graph=True)
    theta_hat = {n: p - _lr(n) * g for (n, p), g in zip(params.items(), grads, strict=True)}
    meta_loss = F.cross_entropy(functional_call(meta_copy, theta_hat, (xm,)), ym)
    return torch.autograd.grad(meta_loss, eps)[0], meta_loss.detach()


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_scores_match_brute_force_and_reverse_references(kind, hypergrad):
    model, x, y, xm, ym = _problem(kind)
    method = L2RW(model, _optimizer(model), iter(()), hypergrad=hypergrad)
    before = state(model)
    torch.manual_seed(7)
    got, meta_loss = method.meta_gradient(x, y, xm, ym)
    brute, brute_meta = brute_force_scores(model, x, y, xm, ym, seed=7)
    rev, _ = reverse_scores(model, x, y, xm, ym, seed=7)
    assert brute.abs().max() > 1e-4 and bool((brute > 0).any()) and bool((brute < 0).any())
    torch.testing.assert_close(got, brute, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got, rev, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(meta_loss, brute_meta, rtol=1e-12, atol=0)
    assert_same(state(model), before, rtol=0, atol=0)  # meta_gradient changes nothing


def test_step_weights_update_and_buffers():
    model, x, y, xm, ym = _problem("cnn", seed=1)
    expected = copy.deepcopy(model)
    brute, _ = brute_force_scores(model, x, y, xm, ym, seed=3)
    want_w = (-brute).clamp_min(0)
    want_w = want_w / want_w.sum()

    method = L2RW(model, _optimizer(model, momentum=0.9), iter([(xm, ym)]))
    torch.manual_seed(3)
    out = method.step(x, y)
    torch.testing.assert_close(out.weights, want_w, rtol=1e-8, atol=1e-12)
    # exactly the samples whose gradient disagrees with the meta gradient are dropped
    dropped = brute >= 0
    assert bool(dropped.any()) and not bool(dropped.all())
    assert torch.equal(out.weights == 0, dropped)
    torch.testing.assert_close(out.weights.sum(), torch.tensor(1.0, dtype=torch.float64))

    # the update is one SGD step on Σ w_i L_i from one real forward (same dropout mask)
    ref_opt = _optimizer(expected, momentum=0.9)
    torch.manual_seed(3)
    losses = F.cross_entropy(expected(x), y, reduction="none")
    torch.testing.assert_close(out.loss, torch.dot(want_w, losses).detach(), rtol=1e-10, atol=0)
    torch.dot(want_w, losses).backward()
    ref_opt.step()
    assert_same(state(model), state(expected), rtol=1e-10, atol=1e-12)
    assert int(model.bn.num_batches_tracked) == 1


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
def test_buffers_move_exactly_as_one_real_forward(hypergrad):
    model, x, y, xm, ym = _problem("cnn", seed=2)
    expected = copy.deepcopy(model)
    method = L2RW(model, _optimizer(model), iter([(xm, ym)]), hypergrad=hypergrad)
    method.step(x, y)
    with torch.no_grad():
        expected(x)
    assert_same(dict(model.named_buffers()), dict(expected.named_buffers()), rtol=0, atol=0)


def test_zero_learning_rate_gives_all_zero_weights_not_nan():
    model, x, y, xm, ym = _problem("mlp")
    method = L2RW(model, torch.optim.SGD(model.parameters(), lr=0.0), iter([(xm, ym)]))
    out = method.step(x, y)
    assert torch.equal(out.weights, torch.zeros(10, dtype=torch.float64))
    assert float(out.loss) == 0.0


def test_frozen_and_unoptimised_parameters_take_no_virtual_step():
    model, x, y, xm, ym = _problem("mlp")
    model.hidden.weight.requires_grad_(False)
    opt = torch.optim.SGD([model.hidden.bias, model.out.weight], lr=LR_BODY)
    torch.manual_seed(0)
    got, _ = L2RW(model, opt, iter(())).meta_gradient(x, y, xm, ym)
    meta_loss = F.cross_entropy(model(xm), ym)
    losses = F.cross_entropy(model(x), y, reduction="none")
    chosen = [model.hidden.bias, model.out.weight]
    gm = torch.autograd.grad(meta_loss, chosen)
    want = torch.stack(
        [
            -LR_BODY
            * sum(
                torch.dot(a.flatten(), b.flatten())
                for a, b in zip(gm, torch.autograd.grad(li, chosen, retain_graph=True), strict=True)
            )
            for li in losses
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_bad_hypergrad_is_named():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="hypergrad must be one of"):
        L2RW(model, torch.optim.SGD(model.parameters(), lr=0.1), iter(()), hypergrad="head")
