"""Small models for the core tests, and an independent reference of one MW-Net iteration."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BnCnn(nn.Module):
    """conv -> BN -> ReLU -> (dropout) -> linear, on 3x8x8 inputs, 5 classes."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


class Mlp(nn.Module):
    def __init__(self, d_in: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh())
        self.head = nn.Linear(8, classes)  # classifier not named `fc`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class WithBuffers(nn.Module):
    """Non-BN buffers: a fixed input normaliser and a forward-call counter it mutates."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.linspace(-1, 1, 6))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.lin = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x - self.shift)


def reference_forward(p: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """BnCnn written out by hand; updates ``buffers`` in place like a train-mode BN."""
    h = F.conv2d(x, p["conv.weight"])
    h = F.batch_norm(
        h,
        buffers["bn.running_mean"],
        buffers["bn.running_var"],
        p["bn.weight"],
        p["bn.bias"],
        training=True,
        momentum=0.1,
        eps=1e-5,
    )
    buffers["bn.num_batches_tracked"] += 1
    return F.linear(F.relu(h).flatten(1), p["fc.weight"], p["fc.bias"])


def reference_weights(theta: list, losses: torch.Tensor) -> torch.Tensor:
    """WeightNet(depth=1) by hand: sigmoid(W2 relu(W1 l + b1) + b2)."""
    w1, b1, w2, b2 = theta
    return torch.sigmoid(F.linear(F.relu(F.linear(losses[:, None], w1, b1)), w2, b2))[:, 0]


def reference_class_aware_weights(
    theta: list, losses: torch.Tensor, labels: torch.Tensor, cluster_of_class: list[int]
) -> torch.Tensor:
    """ClassAwareWeightNet by hand, one sample at a time as the authors' loop does it:
    sigmoid(head_k relu(W1 l + b1)) with k the cluster of the sample's label."""
    w1, b1, head_w, head_b = theta
    out = []
    for loss, label in zip(losses, labels.tolist(), strict=True):
        k = cluster_of_class[label]
        hidden = F.relu(w1[:, 0] * loss + b1)
        out.append(torch.sigmoid(torch.dot(head_w[k], hidden) + head_b[k]))
    return torch.stack(out)


def reference_normalize(w: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "sum":
        return w / w.sum() if float(w.sum().detach()) != 0 else w
    if mode == "sum-detached":  # the CMW-Net imbalance script: / torch.sum(w).detach()
        return w / w.sum().detach() if float(w.sum().detach()) != 0 else w
    return w / len(w) if mode == "mean" else w


def _sgd_direction(name, g, p, state, opt, write: bool):
    """torch.optim.SGD's update direction, spelled out (dampening 0)."""
    d = g + opt["wd"] * p
    if opt["momentum"]:
        old = state.get(name)
        buf = d if old is None else opt["momentum"] * old + d
        if write:
            state[name] = buf.detach().clone()
        d = d + opt["momentum"] * buf if opt["nesterov"] else buf
    return d


def reference_iteration(
    params, buffers, momentum_bufs, theta, batch, opt, mode, virtual, weigh=None
):
    """One iteration as the authors implement it: a copied "meta model" forward, a
    second-order virtual step, the meta loss, a plain-SGD step of the weight net, then a
    fresh real forward and the real SGD step. Returns new (params, theta); ``buffers`` and
    ``momentum_bufs`` are updated in place. ``weigh(theta, losses, labels)`` is the
    weighting net (default :func:`reference_weights`, which ignores the labels)."""
    weigh = weigh or (lambda th, losses, _labels: reference_weights(th, losses))
    x, y, xm, ym = batch
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    th = [t.detach().requires_grad_() for t in theta]
    meta_buffers = {k: v.clone() for k, v in buffers.items()}
    losses = F.cross_entropy(reference_forward(p, meta_buffers, x), y, reduction="none")
    c = reference_normalize(weigh(th, losses.detach(), y), mode)
    grads = torch.autograd.grad((c * losses).sum(), list(p.values()), create_graph=True)
    p_hat = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        step = g if virtual == "sgd" else _sgd_direction(k, g, v, momentum_bufs, opt, False)
        p_hat[k] = v - opt["lr"] * step
    meta_out = reference_forward(p_hat, {k: v.clone() for k, v in buffers.items()}, xm)
    meta_loss = F.cross_entropy(meta_out, ym)
    th_grads = torch.autograd.grad(meta_loss, th)
    new_theta = [(t - opt["vlr"] * g).detach() for t, g in zip(th, th_grads, strict=True)]
    losses = F.cross_entropy(reference_forward(p, buffers, x), y, reduction="none")
    c = reference_normalize(weigh(new_theta, losses.detach(), y), mode)
    grads = torch.autograd.grad((c * losses).sum(), list(p.values()))
    new_params = {}
    for (k, v), g in zip(p.items(), grads, strict=True):
        new_params[k] = (v - opt["lr"] * _sgd_direction(k, g, v, momentum_bufs, opt, True)).detach()
    return new_params, new_theta


def random_batches(shape, classes, dtype=torch.float32, seed=0, n=12, m=10):
    """A seeded (x, y, x_meta, y_meta) of random inputs and labels."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, *shape, generator=g, dtype=dtype),
        torch.randint(0, classes, (n,), generator=g),
        torch.randn(m, *shape, generator=g, dtype=dtype),
        torch.randint(0, classes, (m,), generator=g),
    )
