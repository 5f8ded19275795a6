"""virtual_step="optimizer" against torch.optim.SGD's update rule written out by hand.

The reference below follows the algorithm in the ``torch.optim.SGD`` documentation (the
gradient negated under ``maximize``, then weight decay, then the momentum buffer --
copied on the first step, ``μ·b + (1 − τ)·g`` afterwards -- then Nesterov's look-ahead or
the buffer itself) and shares no code with the package. It is checked three ways:

* it reproduces ``torch.optim.SGD`` itself, step for step, for every rule;
* full iterations of the package (parameters, buffers, weighting net) equal a
  hand-written iteration that takes this virtual step, for both exact hypergradients;
* ``meta_gradient`` equals autograd through the hand-written virtual step, before the
  first real step (no momentum buffer) and after real steps (buffer present), and equals
  central finite differences of a meta loss computed entirely by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import (
    BnCnn,
    random_batches,
    reference_forward,
    reference_normalize,
    reference_weights,
)
from numeric import central_differences
from rounding import sum_bound

import mwnet

DEFAULTS = {
    "lr": 0.1,
    "momentum": 0.0,
    "dampening": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "maximize": False,
}

# Each configuration is a list of param groups; ``prefix`` picks the parameters of a
# group by name (None: all of them). Weight decay is large enough to matter at 1e-9.
CONFIGS: dict[str, list[dict]] = {
    "plain_momentum": [{"prefix": None, "lr": 0.2, "momentum": 0.9}],
    "dampening": [{"prefix": None, "lr": 0.2, "momentum": 0.9, "dampening": 0.3}],
    "nesterov": [{"prefix": None, "lr": 0.2, "momentum": 0.9, "nesterov": True}],
    "weight_decay": [{"prefix": None, "lr": 0.2, "weight_decay": 0.05}],
    "weight_decay_momentum": [{"prefix": None, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.05}],
    "weight_decay_nesterov": [
        {"prefix": None, "lr": 0.2, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05}
    ],
    "maximize": [
        {"prefix": None, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.05, "maximize": True}
    ],
    "param_groups": [
        {"prefix": "conv.", "lr": 0.2, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.02},
        {"prefix": "bn.", "lr": 0.1, "weight_decay": 0.03},
        {"prefix": "fc.", "lr": 0.05, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01},
    ],
}


# --------------------------------------------------------------------------- reference


def sgd_rule(
    grad: torch.Tensor, param: torch.Tensor, buf: torch.Tensor | None, h: dict
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One torch.optim.SGD update of one tensor, as documented: returns ``(u, b)`` with
    the parameter moving to ``param − lr·u`` and ``b`` the new momentum buffer (None
    without momentum). ``buf`` is the buffer before the step (None on the first one)."""
    g = -grad if h["maximize"] else grad
    if h["weight_decay"] != 0:
        g = g + h["weight_decay"] * param
    new_buf = None
    if h["momentum"] != 0:
        # the first step copies the gradient; later ones decay the buffer and damp g
        new_buf = g if buf is None else h["momentum"] * buf + (1 - h["dampening"]) * g
        g = g + h["momentum"] * new_buf if h["nesterov"] else new_buf
    return g, new_buf


def _hyper_by_name(model: torch.nn.Module, config: list[dict]) -> dict[str, dict]:
    out = {}
    for name, _ in model.named_parameters():
        group = next(g for g in config if g["prefix"] is None or name.startswith(g["prefix"]))
        out[name] = {**DEFAULTS, **{k: v for k, v in group.items() if k != "prefix"}}
    return out


def _optimizer(model: torch.nn.Module, config: list[dict]) -> torch.optim.SGD:
    named = dict(model.named_parameters())
    groups = []
    for g in config:
        names = [n for n in named if g["prefix"] is None or n.startswith(g["prefix"])]
        groups.append(
            {"params": [named[n] for n in names], **{k: v for k, v in g.items() if k != "prefix"}}
        )
    return torch.optim.SGD(groups, lr=DEFAULTS["lr"])


def reference_meta_loss(params, buffers, momentum, theta, batch, hyper, virtual):
    """L_meta(θ̂(Θ)) by hand (normalize="sum"): a forward on copied buffers, the weighted
    loss's gradient (kept differentiable in Θ), the hand-written virtual step, the meta
    forward on fresh buffer copies. ``theta`` may or may not require grad."""
    x, y, xm, ym = batch
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    out = reference_forward(p, {k: v.clone() for k, v in buffers.items()}, x)
    losses = F.cross_entropy(out, y, reduction="none")
    c = reference_normalize(reference_weights(theta, losses.detach()), "sum")
    grads = torch.autograd.grad((c * losses).sum(), list(p.values()), create_graph=True)
    p_hat = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        h = hyper[k]
        u = g if virtual == "sgd" else sgd_rule(g, v, momentum.get(k), h)[0]
        p_hat[k] = v - h["lr"] * u
    meta_out = reference_forward(p_hat, {k: v.clone() for k, v in buffers.items()}, xm)
    return F.cross_entropy(meta_out, ym)


def reference_iteration_groups(params, buffers, momentum, theta, batch, hyper, virtual, vlr):
    """One MW-Net iteration by hand with per-parameter SGD settings: the weighting net
    takes a plain SGD step (lr ``vlr``) on ∂L_meta/∂Θ, then the model takes the real SGD
    step on the weights of the updated net. ``buffers`` and ``momentum`` change in place."""
    x, y, _, _ = batch
    th = [t.detach().requires_grad_() for t in theta]
    meta_loss = reference_meta_loss(params, buffers, momentum, th, batch, hyper, virtual)
    th_grads = torch.autograd.grad(meta_loss, th)
    new_theta = [(t - vlr * g).detach() for t, g in zip(th, th_grads, strict=True)]
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    losses = F.cross_entropy(reference_forward(p, buffers, x), y, reduction="none")
    c = reference_normalize(reference_weights(new_theta, losses.detach()), "sum")
    grads = torch.autograd.grad((c * losses).sum(), list(p.values()))
    new_params = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        u, buf = sgd_rule(g, v.detach(), momentum.get(k), hyper[k])
        if buf is not None:
            momentum[k] = buf.detach().clone()
        new_params[k] = (v - hyper[k]["lr"] * u).detach()
    return new_params, new_theta


# --------------------------------------------------------------------------- helpers


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _setup(config: str, seed: int = 0):
    torch.manual_seed(seed)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=6).double()
    return model, vnet, _optimizer(model, CONFIGS[config]), _hyper_by_name(model, CONFIGS[config])


def _model_state(model, opt):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    momentum = {}
    for k, p in model.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            momentum[k] = buf.clone()
    return params, buffers, momentum


def _plain_steps(model, opt, n: int) -> None:
    """``n`` steps of torch.optim.SGD itself on the plain mean loss (fills its state)."""
    for i in range(n):
        x, y, _, _ = random_batches((3, 8, 8), 5, torch.float64, seed=100 + i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("config", CONFIGS)
def test_reference_rule_reproduces_torch_sgd(config):
    """The hand-written rule is torch.optim.SGD: three steps from the same gradients."""
    torch.manual_seed(0)
    model = BnCnn().double()
    opt = _optimizer(model, CONFIGS[config])
    hyper = _hyper_by_name(model, CONFIGS[config])
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    momentum: dict[str, torch.Tensor] = {}
    # Σ|every term| each entry went through: the scale of its rounding errors
    magnitude = {k: torch.zeros_like(v) for k, v in params.items()}
    g = torch.Generator().manual_seed(1)
    steps = 3
    for _ in range(steps):
        grads = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}
        for k, p in model.named_parameters():
            p.grad = grads[k].clone()
        opt.step()
        for k, v in params.items():
            u, buf = sgd_rule(grads[k], v, momentum.get(k), hyper[k])
            old = momentum.get(k, torch.zeros_like(v)).abs()
            magnitude[k] += v.abs() + grads[k].abs() + old + u.abs() * (1 + hyper[k]["lr"])
            if buf is not None:
                momentum[k] = buf
            params[k] = v - hyper[k]["lr"] * u
    # torch's foreach kernels fuse and order the same element-wise operations differently
    # (an FMA for ``p − lr·u``, for ``μ·b + (1 − τ)·g``): at most 10 roundings a step in
    # each, an error carried on with factors of at most 1 + lr·(1 + μ) < 2 (Higham, Lemma
    # 3.1), so the two differ by at most 2·γ_{2·10·steps} of the terms' magnitude.
    bound = {k: sum_bound(2 * 10 * steps, 1.0, torch.float64) * m for k, m in magnitude.items()}
    for k, p in model.named_parameters():
        pairs = [(p.detach(), params[k])]
        if k in momentum:
            pairs.append((opt.state[p]["momentum_buffer"], momentum[k]))
        for got, want in pairs:
            excess = float(((got - want).abs() - bound[k]).max())
            assert excess <= 0, f"{k}: {excess:.3g} farther apart than rounding allows"


CASES = [(c, "optimizer") for c in CONFIGS] + [("param_groups", "sgd"), ("maximize", "sgd")]


@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
@pytest.mark.parametrize(("config", "virtual_step"), CASES)
def test_steps_match_reference_for_each_sgd_rule(config, virtual_step, hypergrad):
    """Three full iterations (BatchNorm model, float64) against the hand-written one,
    checked after each: the first has no momentum buffer, the later ones read it."""
    model, vnet, opt, hyper = _setup(config)
    vlr = 0.5
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=vlr),
        hypergrad=hypergrad,
        normalize="sum",
        virtual_step=virtual_step,
    )
    params, buffers, momentum = _model_state(model, opt)
    theta = [t.detach().clone() for t in vnet.parameters()]
    theta_before = [t.clone() for t in theta]
    for i in range(3):
        batch = random_batches((3, 8, 8), 5, torch.float64, seed=i)
        rw.step(*batch)
        params, theta = reference_iteration_groups(
            params, buffers, momentum, theta, batch, hyper, virtual_step, vlr
        )
        for k, v in model.named_parameters():
            torch.testing.assert_close(
                v.detach(),
                params[k],
                rtol=1e-9,
                atol=1e-12,
                msg=lambda m, k=k, i=i: f"{i} {k}: {m}",
            )
        for k, v in model.named_buffers():
            torch.testing.assert_close(v, buffers[k], rtol=1e-9, atol=1e-12)
        for j, (got, want) in enumerate(zip(vnet.parameters(), theta, strict=True)):
            torch.testing.assert_close(
                got.detach(), want, rtol=1e-9, atol=1e-12, msg=lambda m, j=j, i=i: f"{i} Θ{j}: {m}"
            )
    assert _rel(_flat(theta), _flat(theta_before)) > 1e-4  # the weighting net did move


@pytest.mark.parametrize("prior_steps", [0, 2])
@pytest.mark.parametrize("hypergrad", ["fast", "reverse"])
@pytest.mark.parametrize("config", CONFIGS)
def test_meta_gradient_matches_autograd_through_reference_step(config, hypergrad, prior_steps):
    """∂L_meta/∂Θ from the package equals autograd through the hand-written virtual step,
    with the optimizer state torch.optim.SGD itself left after ``prior_steps`` steps."""
    model, vnet, opt, hyper = _setup(config)
    _plain_steps(model, opt, prior_steps)
    params, buffers, momentum = _model_state(model, opt)
    has_momentum = any(h["momentum"] != 0 for h in hyper.values())
    assert bool(momentum) == (prior_steps > 0 and has_momentum)
    rw = mwnet.MetaReweighter(model, opt, vnet, hypergrad=hypergrad, virtual_step="optimizer")
    batch = random_batches((3, 8, 8), 5, torch.float64, seed=7)
    got, got_loss = rw.meta_gradient(*batch)
    theta = [t.detach().clone().requires_grad_() for t in vnet.parameters()]
    want_loss = reference_meta_loss(params, buffers, momentum, theta, batch, hyper, "optimizer")
    want = torch.autograd.grad(want_loss, theta)
    torch.testing.assert_close(got_loss, want_loss.detach(), rtol=1e-12, atol=0)
    assert _flat(want).norm() > 0
    assert _rel(_flat(got), _flat(want)) <= 1e-9


def _hand_meta_loss(theta, params, momentum, batch, lr, mu, damp, decay, nesterov):
    """The meta loss as a function of the weighting net's parameters ``theta``, written
    out without the package or the reference helpers above: the BatchNorm model's
    train-mode forward (batch statistics; it reads and writes no buffer), per-sample
    losses, the 1-h-1 weighting net, normalisation by the sum, one SGD step with an
    existing momentum buffer, the mean meta cross-entropy."""
    x, y, xm, ym = batch
    w1, b1, w2, b2 = theta
    p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}

    def forward(q, inputs):
        h = F.conv2d(inputs, q["conv.weight"])
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-5)
        h = h * q["bn.weight"].view(1, -1, 1, 1) + q["bn.bias"].view(1, -1, 1, 1)
        logits = torch.relu(h).flatten(1) @ q["fc.weight"].T + q["fc.bias"]
        return -torch.log_softmax(logits, dim=1)

    nll = forward(p, x)
    losses = nll[torch.arange(len(y)), y]
    lo = losses.detach()[:, None]
    weights = torch.sigmoid(torch.relu(lo @ w1.T + b1) @ w2.T + b2)[:, 0]
    c = weights / weights.sum()
    grads = torch.autograd.grad((c.detach() * losses).sum(), list(p.values()))
    p_hat = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        d = g + decay * v.detach()
        buf = mu * momentum[k] + (1 - damp) * d
        u = d + mu * buf if nesterov else buf
        p_hat[k] = v.detach() - lr * u
    meta_nll = forward(p_hat, xm)
    return meta_nll[torch.arange(len(ym)), ym].mean()


@pytest.mark.parametrize(
    ("nesterov", "damp"), [(False, 0.0), (False, 0.25), (True, 0.0)], ids=["plain", "damp", "nag"]
)
def test_meta_gradient_matches_finite_differences_of_hand_written_meta_loss(nesterov, damp):
    """Central differences in float64 of a meta loss computed entirely by hand, after one
    real step (so the momentum buffer exists), against both exact hypergradients."""
    torch.manual_seed(0)
    model, vnet = BnCnn().double(), mwnet.WeightNet(hidden=6).double()
    lr, mu, decay = 0.3, 0.9, 0.02
    opt = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=mu,
        dampening=damp,
        nesterov=nesterov,
        weight_decay=decay,
    )
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=0.1),
        hypergrad="fast",
        virtual_step="optimizer",
    )
    rw.step(*random_batches((3, 8, 8), 5, torch.float64, seed=0))
    batch = random_batches((3, 8, 8), 5, torch.float64, seed=1)
    reverse = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=0.1),
        hypergrad="reverse",
        virtual_step="optimizer",
    )
    params, buffers, momentum = _model_state(model, opt)
    assert set(momentum) == set(params)
    theta = [t.detach().clone() for t in vnet.parameters()]

    def meta_loss(th):
        return _hand_meta_loss(th, params, momentum, batch, lr, mu, damp, decay, nesterov)

    numeric = central_differences(theta, lambda: meta_loss(theta), eps=1e-5)
    assert numeric.norm() > 0
    for rw_mode in (rw, reverse):
        grads, loss = rw_mode.meta_gradient(*batch)
        torch.testing.assert_close(loss, meta_loss(theta).detach(), rtol=1e-12, atol=0)
        assert _rel(_flat(grads), numeric) <= 1e-6, rw_mode.hypergrad
    for k, v in model.named_buffers():  # neither meta_gradient moved the running statistics
        assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize(
    "make", [torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad], ids=lambda m: m.__name__
)
def test_optimizer_virtual_step_refuses_other_optimizers(make):
    model = BnCnn()
    with pytest.raises(ValueError, match=r"mirrors torch\.optim\.SGD .*virtual_step='sgd'"):
        mwnet.MetaReweighter(model, make(model.parameters()), virtual_step="optimizer")
