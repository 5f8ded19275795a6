"""Meta Label Correction: the correction net, a whole step and its meta gradient against a
reference written out with plain autograd in float64, central differences, the planted
bugs they catch, the state that carries a resume, and ``mwnet compare``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from corruption_helpers import assert_same_end, tiny_compare_args, tiny_config, write_fmnist
from method_nets import CLASSES, TinyMlp, assert_same, batch, make_model, state
from rounding import (
    ORDER_FACTOR,
    assert_within_order_noise,
    central_difference_error,
    floor,
    gamma,
    sum_bound,
    unit_roundoff,
)

from mwnet.cli import main
from mwnet.methods import MetaLabelCorrection, MlcOptions, build_method
from mwnet.methods.mlc import LabelCorrectionNet
from mwnet.run import load_checkpoint
from mwnet.train import loop
from mwnet.train.config import ConfigError

F64 = torch.float64
LR, MU, WD = 0.5, 0.9, 5e-4
"""The model's SGD: the authors' momentum and weight decay, a large rate so one virtual
step moves the meta loss well above rounding."""
NET_LR = 1e-2
B1, B2, EPS = 0.9, 0.999, 1e-8
"""Adam's defaults, and the authors' epsilon."""
HIDDEN, EMBEDDING = 7, 3


# ---------------------------------------------------------------- the reference, by hand


def model_forward(theta: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TinyMlp written out: logits and the representation (the classifier's input)."""
    h = torch.tanh(x @ theta["hidden.weight"].T + theta["hidden.bias"])
    return h @ theta["out.weight"].T + theta["out.bias"], h


def corrector_forward(alpha: dict, h: torch.Tensor, y: torch.Tensor, skip: bool = False):
    """The authors' MetaNet written out: [h, E[y]] -> tanh -> tanh -> softmax, and with
    ``skip`` the gate a (one more output) mixing in the one-hot noisy label."""
    z = torch.cat([h, alpha["embedding.weight"][y]], dim=1)
    z = torch.tanh(z @ alpha["net.0.weight"].T + alpha["net.0.bias"])
    z = torch.tanh(z @ alpha["net.2.weight"].T + alpha["net.2.bias"])
    z = z @ alpha["net.4.weight"].T + alpha["net.4.bias"]
    if not skip:
        return torch.softmax(z, dim=1)
    a = torch.sigmoid(z[:, CLASSES:])
    return (1 - a) * torch.softmax(z[:, :CLASSES], dim=1) + a * F.one_hot(y, CLASSES)


def leaves(tensors: dict) -> dict:
    return {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}


def virtual_meta_loss(theta, buf, alpha, parts, bug: str | None = None):
    """J, its gradient in θ (with graph) and the meta loss after one virtual SGD step with
    momentum and weight decay, for the parts (training, meta-loss, trusted-training)."""
    (x, y), (xe, ye), (xt, yt) = parts
    logits, h = model_forward(theta, x)
    q = corrector_forward(alpha, h.detach(), y)
    trusted = F.cross_entropy(model_forward(theta, xt)[0], yt, reduction="sum")
    objective = (-(q * torch.log_softmax(logits, dim=1)).sum() + trusted) / (len(y) + len(yt))
    grads = torch.autograd.grad(objective, list(theta.values()), create_graph=True)
    moves = {}
    for (k, p), g in zip(theta.items(), grads, strict=True):
        d = g + WD * p
        moves[k] = d if buf is None else MU * buf[k] + d  # torch's first step: buf = d
    theta_hat = {k: p - LR * moves[k] for k, p in theta.items()}
    at = theta if bug == "meta loss before the virtual step" else theta_hat
    meta = F.cross_entropy(model_forward(at, xe)[0], ye)
    return objective, moves, meta


def adam(alpha: dict, grads: dict, st: dict) -> tuple[dict, dict]:
    """One torch Adam step with AMSGrad, no weight decay, written out."""
    t = st.get("t", 0) + 1
    m = {k: B1 * st.get("m", {}).get(k, 0) + (1 - B1) * g for k, g in grads.items()}
    v = {k: B2 * st.get("v", {}).get(k, 0) + (1 - B2) * g * g for k, g in grads.items()}
    vmax = {k: torch.maximum(st["vmax"][k], v[k]) if "vmax" in st else v[k] for k in v}
    new = {}
    for k, a in alpha.items():
        denom = vmax[k].sqrt() / (1 - B2**t) ** 0.5 + EPS
        new[k] = a - NET_LR / (1 - B1**t) * m[k] / denom
    return new, {"t": t, "m": m, "v": v, "vmax": vmax}


def reference_step(theta, buf, alpha, st, parts, bug: str | None = None, fed=None):
    """One MLC step: the correction net's Adam step on the meta gradient, the model's SGD
    step on ∇_θ J with the labels the virtual step used. ``bug`` plants a plausible
    mistake; ``fed`` replaces the labels the correction net is fed."""
    theta, alpha = leaves(theta), leaves(alpha)
    if fed is not None:
        (x, _), *rest = parts
        parts = ((x, fed), *rest)
    objective, moves, meta = virtual_meta_loss(theta, buf, alpha, parts, bug)
    hyper = torch.autograd.grad(meta, list(alpha.values()), retain_graph=True, allow_unused=True)
    hyper = [
        torch.zeros_like(a) if g is None else g for a, g in zip(alpha.values(), hyper, strict=True)
    ]
    if bug == "labels attached in the real update":  # the net descends J as well
        direct = torch.autograd.grad(objective, list(alpha.values()), retain_graph=True)
        hyper = [a + b for a, b in zip(hyper, direct, strict=True)]
    new_alpha, st = adam(alpha, dict(zip(alpha, hyper, strict=True)), st)
    new_buf = {k: m.detach() for k, m in moves.items()}
    new_theta = {k: (p - LR * new_buf[k]).detach() for k, p in theta.items()}
    out = {"loss": objective.detach(), "meta_loss": meta.detach()}
    return new_theta, new_buf, {k: a.detach() for k, a in new_alpha.items()}, st, out


def split(xm: torch.Tensor, ym: torch.Tensor, trusted_half: bool):
    """The meta loss on the odd positions, training on the even ones (or all: meta loss)."""
    if trusted_half:
        return (xm[1::2], ym[1::2]), (xm[0::2], ym[0::2])
    return (xm, ym), (xm[:0], ym[:0])


# ---------------------------------------------------------------- fixtures


def problem(steps: int = 2, seed: int = 0):
    """Batches of a learnable task with noisy labels, and their true labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        truth = torch.randint(0, CLASSES, (10,), generator=g)
        x = torch.randn(10, 6, generator=g, dtype=F64)
        x[torch.arange(10), truth] += 2.0
        noisy = truth.clone()
        noisy[:4] = (truth[:4] + 1 + torch.randint(0, CLASSES - 1, (4,), generator=g)) % CLASSES
        ym = torch.randint(0, CLASSES, (8,), generator=g)
        xm = torch.randn(8, 6, generator=g, dtype=F64)
        xm[torch.arange(8), ym] += 2.0
        out.append((x, noisy, xm, ym, truth))
    return out


def method_on(model, batches, **options) -> MetaLabelCorrection:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU, weight_decay=WD)
    o = MlcOptions(hidden=HIDDEN, embedding=EMBEDDING, lr=NET_LR, **options)
    return MetaLabelCorrection(model, opt, iter(batches), CLASSES, options=o, seed=3)


def parts_of(b, trusted_half: bool, order: torch.Generator | None = None):
    """(training, meta-loss, trusted-training) parts of a batch; ``order`` permutes the
    samples within each part (the same sums in another order)."""
    x, y, xm, ym, _ = b
    parts = ((x, y), *split(xm, ym, trusted_half))
    if order is None:
        return parts
    out = []
    for xs, ys in parts:
        p = torch.randperm(len(ys), generator=order)
        out.append((xs[p], ys[p]))
    return tuple(out)


def run_reference(model, method, batches, trusted_half, order=None, bug=None):
    """The reference over ``batches`` from the model's and the method's state; with
    ``bug="clean label fed"`` the correction net is fed each batch's true labels."""
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha = {k: v.detach().clone() for k, v in method.corrector.named_parameters()}
    buf, st, outs = None, {}, []
    for b in batches:
        parts = parts_of(b, trusted_half, order)
        fed = b[4] if bug == "clean label fed" else None
        planted = None if bug == "clean label fed" else bug
        theta, buf, alpha, st, out = reference_step(theta, buf, alpha, st, parts, planted, fed)
        outs.append(out)
    return theta, buf, alpha, st, outs


# ---------------------------------------------------------------- the correction net


def layer_error_bound(alpha: dict, h: torch.Tensor, y: torch.Tensor) -> float:
    """How far two float64 evaluations of the net's output can differ: each affine layer
    adds at most 2·γ_{d+1}·(|W||a| + |b|) to its outputs (Higham §3.5: d products and the
    bias summed in another order), and passes on the error it receives times its row norm
    ‖W‖_∞; tanh is 1-Lipschitz and rounds once (u); softmax is 2-Lipschitz in the max-norm
    (its Jacobian diag(q) − qqᵀ has row sums ≤ 2 max q) and rounds in γ_{K+2}."""
    u = unit_roundoff(F64)
    a = torch.cat([h, alpha["embedding.weight"][y]], dim=1).abs()
    err = 0.0
    for i in (0, 2, 4):
        w, b = alpha[f"net.{i}.weight"], alpha[f"net.{i}.bias"]
        magnitude = a @ w.abs().T + b.abs()
        err = err * float(w.abs().sum(1).max()) + sum_bound(w.shape[1] + 1, magnitude.max(), F64)
        if i < 4:
            err, a = err + u, torch.tanh(magnitude).abs()  # |tanh(z)| <= tanh(|z|) bounds it
    return 2 * err + 2 * gamma(CLASSES + 2, F64)


@pytest.mark.parametrize("skip", [False, True])
def test_the_correction_net_is_the_authors_metanet(skip):
    net = LabelCorrectionNet(8, CLASSES, hidden=HIDDEN, embedding=EMBEDDING, skip=skip, seed=3)
    net = net.double()
    g = torch.Generator().manual_seed(1)
    h, y = torch.randn(12, 8, generator=g, dtype=F64), torch.randint(0, CLASSES, (12,), generator=g)
    alpha = {k: v.detach() for k, v in net.named_parameters()}
    with torch.no_grad():
        got, want = net(h, y), corrector_forward(alpha, h, y, skip)
    tol = layer_error_bound(alpha, h, y)  # 2.8e-13 here; measured: identical
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(got.sum(1), torch.ones(12, dtype=F64), rtol=0, atol=tol)
    # planted: a net fed another label (the clean one, say) gives other corrections
    with torch.no_grad():
        other = corrector_forward(alpha, h, (y + 1) % CLASSES, skip)
    assert float((other - got).abs().max()) > 1e6 * tol
    # the authors' initialisation: zero biases, Xavier scales (normal: std √(2/(in+out)))
    assert all(float(b.abs().max()) == 0 for k, b in alpha.items() if k.endswith("bias"))
    w = alpha["net.2.weight"]
    assert 0.5 < float(w.std()) / (2 / (w.shape[0] + w.shape[1])) ** 0.5 < 1.5
    bound = (6 / (CLASSES + EMBEDDING)) ** 0.5  # Xavier-uniform's limit
    assert float(alpha["embedding.weight"].abs().max()) <= bound


def test_the_correction_net_is_seeded_and_moves_no_global_random_state():
    before = torch.get_rng_state()
    a = LabelCorrectionNet(8, CLASSES, seed=5)
    b = LabelCorrectionNet(8, CLASSES, seed=5)
    c = LabelCorrectionNet(8, CLASSES, seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    assert_same(state(a), state(b), rtol=0, atol=0)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


# ---------------------------------------------------------------- a step, written out


@pytest.mark.parametrize(
    ("hypergrad", "trusted_half"), [("reverse", True), ("fast", True), ("fast", False)]
)
def test_two_steps_are_the_reference_written_out(hypergrad, trusted_half):
    """Two steps (the second with momentum and Adam state) of the method equal the
    reference: the model, its momentum, the correction net, its Adam moments (which carry
    the meta gradient itself: Adam's first step is nearly sign(g)), the losses. The bound
    is measured: the reference run again on the samples of every part in another order,
    which changes nothing but the order of its sums."""
    torch.manual_seed(0)
    model = TinyMlp().double()
    batches = problem()
    method = method_on(
        model, [(b[2], b[3]) for b in batches], hypergrad=hypergrad, trusted_half=trusted_half
    )
    start = copy.deepcopy((model, method))
    outs = [method.step(b[0], b[1]) for b in batches]

    ref = run_reference(start[0], start[1], batches, trusted_half)
    orders = [
        run_reference(start[0], start[1], batches, trusted_half, torch.Generator().manual_seed(s))
        for s in (1, 2)
    ]
    got = _results(model, method, outs)
    want = _as_results(ref)
    for key, value in want.items():
        assert_within_order_noise(got[key], value, [_as_results(o)[key] for o in orders], key)

    # planted bugs: each lands many times the bound away from the method
    for bug in (
        "meta loss before the virtual step",
        "labels attached in the real update",
        "clean label fed",
    ):
        wrong = _as_results(run_reference(start[0], start[1], batches, trusted_half, bug=bug))
        for key in ("adam.exp_avg", "corrector"):
            bound = _bound(want[key], [_as_results(o)[key] for o in orders])
            distance = float((wrong[key] - got[key]).abs().max())
            assert distance > 1e3 * bound, f"{bug}: {key} only {distance:.3g} away"


def _bound(reference: torch.Tensor, reorderings: list[torch.Tensor]) -> float:
    """The bound :func:`assert_within_order_noise` allows."""
    noise = max(float((r - reference).abs().max()) for r in reorderings)
    return max(ORDER_FACTOR * noise, floor(reference))


def _results(model, method, outs) -> dict[str, torch.Tensor]:
    opt = method.corrector_optimizer
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    return {
        "model": flat(model.parameters()),
        "momentum": flat(method.optimizer.state[p]["momentum_buffer"] for p in model.parameters()),
        "corrector": flat(method.corrector.parameters()),
        "adam.exp_avg": flat(opt.state[p]["exp_avg"] for p in method.corrector.parameters()),
        "adam.max_exp_avg_sq": flat(
            opt.state[p]["max_exp_avg_sq"] for p in method.corrector.parameters()
        ),
        "loss": torch.stack([o.loss for o in outs]),
        "meta_loss": torch.stack([o.meta_loss for o in outs]),
    }


def _as_results(ref) -> dict[str, torch.Tensor]:
    theta, buf, alpha, st, outs = ref
    flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])  # noqa: E731
    return {
        "model": flat(theta.values()),
        "momentum": flat(buf.values()),
        "corrector": flat(alpha.values()),
        "adam.exp_avg": flat(st["m"].values()),
        "adam.max_exp_avg_sq": flat(st["vmax"].values()),
        "loss": torch.stack([o["loss"] for o in outs]),
        "meta_loss": torch.stack([o["meta_loss"] for o in outs]),
    }


# ---------------------------------------------------------------- the meta gradient


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_the_meta_gradient_is_the_central_difference_of_the_meta_loss(hypergrad):
    """⟨∂L_meta/∂α, d⟩ against (f(h) − f(−h)) / 2h of the written-out meta loss after the
    virtual step, f(t) = L_meta(θ̂(α + t·d)), from a state with a momentum buffer."""
    torch.manual_seed(0)
    model = TinyMlp().double()
    batches = problem()
    method = method_on(model, [(b[2], b[3]) for b in batches], hypergrad=hypergrad)
    method.step(*batches[0][:2])
    x, y, xm, ym, _ = batches[1]
    grads, meta_loss = method.meta_gradient(x, y, xm, ym)
    names = [k for k, _ in method.corrector.named_parameters()]
    grad = dict(zip(names, grads, strict=True))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    buf = {k: method.optimizer.state[p]["momentum_buffer"] for k, p in model.named_parameters()}
    alpha = {k: v.detach().clone() for k, v in method.corrector.named_parameters()}
    parts = parts_of(batches[1], trusted_half=True)
    g = torch.Generator().manual_seed(4)
    directions = [
        {k: torch.randn(a.shape, generator=g, dtype=F64) for k, a in alpha.items()},
        {k: torch.zeros_like(a) for k, a in alpha.items()},
        {k: torch.zeros_like(a) for k, a in alpha.items()},
    ]
    directions[1]["net.4.bias"][0] = 1.0  # one class's bias (all of them: softmax ignores it)
    directions[2]["embedding.weight"][int(y[0])] = 1.0  # the embedding of one noisy label
    for d in directions:
        norm = sum(float((v * v).sum()) for v in d.values()) ** 0.5
        d = {k: v / norm for k, v in d.items()}

        def f(t: float, d=d) -> float:
            moved = {k: a + t * d[k] for k, a in alpha.items()}
            return float(virtual_meta_loss(leaves(theta), buf, moved, parts)[2].detach())

        assert f(0) == pytest.approx(float(meta_loss), rel=1e-14)
        h, s = 1e-3, 0.05
        fd = (f(h) - f(-h)) / (2 * h)
        # |f'''| measured by the widest stencil (stable to 1e-3 relative for s in 0.02..0.2
        # here), taken 10x; f is a few hundred flops deep, 1e4 roundings bounds it
        third = abs(f(2 * s) - 2 * f(s) + 2 * f(-s) - f(-2 * s)) / (2 * s**3)
        tol = central_difference_error(h, abs(f(0)), 10 * third, F64, ops=10_000)
        got = sum(float((grad[k] * d[k]).sum()) for k in names)
        assert abs(got - fd) <= tol, f"{got} vs {fd} (tolerance {tol:.3g})"
        assert abs(fd) > 1e3 * tol  # the gradient is far from the planted bug's zero
    # planted: a virtual step that ignores the momentum buffer (plain SGD) misses it
    plain = method_on(copy.deepcopy(model), [], hypergrad=hypergrad, virtual_step="sgd")
    plain.corrector.load_state_dict(method.corrector.state_dict())
    plain.optimizer.load_state_dict(method.optimizer.state_dict())
    wrong, _ = plain.meta_gradient(x, y, xm, ym)
    d = directions[0]
    norm = sum(float((v * v).sum()) for v in d.values()) ** 0.5
    off = sum(float(((w - grad[k]) * d[k]).sum()) for k, w in zip(names, wrong, strict=True))
    assert abs(off) / norm > 1e3 * tol


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
def test_buffers_move_as_one_real_forward_and_nothing_else_changes(hypergrad):
    torch.manual_seed(0)
    model = make_model("cnn", F64, dropout=0.3)
    x, y = batch("cnn", 0, dtype=F64)
    xm, ym = batch("cnn", 100, n=8, dtype=F64)
    expected = copy.deepcopy(model)
    method = method_on(model, [(xm, ym)], hypergrad=hypergrad)
    before = state(model), state(method.corrector)
    method.meta_gradient(x, y, xm, ym)
    method.corrected_labels(x, y)
    assert_same(state(model), before[0], rtol=0, atol=0)  # neither changes any state
    assert_same(state(method.corrector), before[1], rtol=0, atol=0)
    method.step(x, y)
    with torch.no_grad():
        expected(x)
    assert_same(dict(model.named_buffers()), dict(expected.named_buffers()), rtol=0, atol=0)
    assert int(model.bn.num_batches_tracked) == 1


def test_fast_replays_the_dropout_masks_of_the_real_forward():
    """With dropout and BatchNorm, fast (a forward-mode replay of the training forward)
    and reverse (differentiating that forward itself) agree; reverse with other dropout
    masks does not."""
    torch.manual_seed(0)
    model = make_model("cnn", F64, dropout=0.3)
    x, y = batch("cnn", 0, dtype=F64)
    xm, ym = batch("cnn", 100, n=8, dtype=F64)
    got = {}
    for mode, seed in (("reverse", 7), ("fast", 7), ("other masks", 8)):
        hypergrad = "reverse" if mode == "other masks" else mode
        method = method_on(copy.deepcopy(model), [], hypergrad=hypergrad)
        torch.manual_seed(seed)
        got[mode] = torch.cat([g.reshape(-1) for g in method.meta_gradient(x, y, xm, ym)[0]])
    scale = float(got["reverse"].abs().max())
    # float64, the same derivative through two chains of a few thousand roundings each
    # (γ_1e4 = 1.1e-12 of the scale); other masks move it by a tenth of the scale
    tol = 2 * gamma(10_000, F64) * scale
    torch.testing.assert_close(got["fast"], got["reverse"], rtol=0, atol=tol)
    assert float((got["other masks"] - got["reverse"]).abs().max()) > 1e6 * tol


# ---------------------------------------------------------------- options and errors


def test_options_reach_the_method_through_the_registry():
    model = make_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method(
        "mlc",
        model=model,
        optimizer=opt,
        meta_batches=iter(()),
        class_counts=torch.ones(CLASSES),
        options={"mlc": {"hidden": 5, "embedding": 2, "lr": 0.01, "amsgrad": False, "skip": True}},
    )
    net = method.corrector
    assert isinstance(method, MetaLabelCorrection) and method.name == "mlc"
    assert (net.embedding.embedding_dim, net.net[0].in_features, net.net[0].out_features) == (
        2,
        8 + 2,  # TinyMlp's representation has 8 features
        5,
    )
    assert net.net[4].out_features == CLASSES + 1  # the gate
    group = method.corrector_optimizer.param_groups[0]
    assert isinstance(method.corrector_optimizer, torch.optim.Adam)
    assert (group["lr"], group["amsgrad"], group["eps"], group["weight_decay"]) == (
        0.01,
        False,
        1e-8,
        0.0,
    )
    assert method.networks() == {"corrector": net}


def test_bad_options_and_batches_are_named():
    model = make_model("mlp")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for options, message in (
        (MlcOptions(hidden=0), "method.mlc.hidden must be >= 1"),
        (MlcOptions(lr=-1.0), "method.mlc.lr must be >= 0"),
        (MlcOptions(hypergrad="head"), "method.mlc.hypergrad must be one of fast, reverse"),
    ):
        with pytest.raises(ValueError, match=message):
            MetaLabelCorrection(model, sgd, iter(()), CLASSES, options=options)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"virtual_step='optimizer' mirrors torch\.optim\.SGD"):
        MetaLabelCorrection(model, adam, iter(()), CLASSES)
    x, y = batch("mlp", 0)
    method = MetaLabelCorrection(model, sgd, iter([batch("mlp", 1, n=1)]), CLASSES)
    before = state(model)
    with pytest.raises(ValueError, match=r"has 1 sample.*method\.mlc\.trusted_half=false"):
        method.step(x, y)
    assert_same(state(model), before, rtol=0, atol=0)


def test_the_config_refuses_a_bad_value(tmp_path):
    root = write_fmnist(tmp_path / "fmnist")
    with pytest.raises(ConfigError, match=r"method\.mlc\.embedding must be >= 1"):
        tiny_config(root, tmp_path, "mlc", "method.mlc.embedding=0")


# ---------------------------------------------------------------- through the loop


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


def test_a_resumed_run_is_the_uninterrupted_one_bit_for_bit(fmnist_root, tmp_path):
    whole, whole_dir = loop.start(tiny_config(fmnist_root, tmp_path, "mlc", "name=w"), quiet=True)
    whole.fit()
    cut, cut_dir = loop.start(tiny_config(fmnist_root, tmp_path, "mlc", "name=c"), quiet=True)
    cut.fit(stop_after=1)
    cut.close()
    loop.resume(cut_dir, quiet=True).fit()
    saved = assert_same_end(whole_dir, cut_dir)["method"]
    assert saved["steps_done"] == 8  # 2 epochs of 4 batches
    assert set(saved) == {"steps_done", "corrector", "corrector_optimizer"}
    first = tiny_config(fmnist_root, tmp_path, "mlc", "name=fresh")
    fresh, _ = loop.start(first, quiet=True)  # the net learned: not its initial weights
    start = fresh.exp.method.corrector.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in saved["corrector"].items())


def test_compare_trains_ce_mlc_and_mwnet_on_the_same_data(fmnist_root, tmp_path, capsys):
    args = tiny_compare_args(
        fmnist_root, tmp_path, "ce,mlc,mwnet", "optim.epochs=1", "method.mlc.hidden=16"
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    record = json.loads(next(tmp_path.glob("*/comparison.json")).read_text())
    runs = {r["method"]: r for r in record["runs"]}
    assert set(runs) >= {"ce", "mlc", "mwnet"}
    for name in ("ce", "mlc", "mwnet"):
        assert runs[name]["status"] == "trained"
        assert f"| {name} |" in out
    saved = load_checkpoint(Path(runs["mlc"]["run_dir"]) / "checkpoint.pt")
    assert saved["config"]["method"]["mlc"]["hidden"] == 16
    assert saved["method"]["corrector"]["net.0.weight"].shape == (16, 8 + 128)
