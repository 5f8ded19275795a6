"""Checks shared by the tests of the loss-only baselines: one step against a reference
loss, the objective's gradient against finite differences, a resume that steps alike."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from method_nets import CLASSES, batch, counts, make_model
from torch import nn

from mwnet.methods import Method, build_method

LR = 0.5
"""Plain SGD, no momentum: the update is -LR times the gradient, nothing else."""

STEP_RTOL = 1e-12
"""A method's float64 step and the reference's differ by the rounding of two evaluations
of the same loss and gradient: a tiny MLP's forward and backward and the loss, a few
hundred float64 operations each, within gamma_300 = 3.3e-14 relative of the exact values.
1e-12 is 30 times that; a nearby wrong loss (GCE's q = 0.62 for 0.6) moves the
parameters by 1e-3 relative (measured), and fails it."""


def model64(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make_model("mlp", torch.float64)


def build64(name: str, model: nn.Module, options: dict) -> tuple[torch.optim.Optimizer, Method]:
    """``name`` from the registry on ``model`` with plain SGD and ``options`` as the config
    gives them (``{"<group>": {field: value}}``, ``"epochs"``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    method = build_method(
        name,
        model=model,
        optimizer=optimizer,
        meta_batches=iter(()),
        class_counts=counts(),
        options=options,
    )
    return optimizer, method


def batch64(seed: int, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return batch("mlp", seed, n=n, dtype=torch.float64)


def reference_update(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The parameters after one plain SGD step on ``loss_of(logits, y)``, on a copy."""
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    grads = torch.autograd.grad(loss_of(twin(x), y), list(params.values()))
    return {k: (p - LR * g).detach() for (k, p), g in zip(params.items(), grads, strict=True)}


def assert_step_matches(
    model: nn.Module,
    method: Method,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """``method.step(x, y)`` moves ``model`` exactly as SGD on the reference loss does, and
    reports that loss and the plain cross-entropies."""
    with torch.no_grad():
        logits = model(x)
        want_loss = loss_of(logits, y)
        want_ce = F.cross_entropy(logits, y, reduction="none")
    want = reference_update(model, x, y, loss_of)
    out = method.step(x, y)
    torch.testing.assert_close(out.loss, want_loss, rtol=STEP_RTOL, atol=0)
    torch.testing.assert_close(out.losses, want_ce, rtol=STEP_RTOL, atol=0)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[k], rtol=STEP_RTOL, atol=1e-15, msg=k)


def objective_of(method: Method) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The method's loss of logits and labels, as its step computes it."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        return method.objective(logits, ce, y)[0]

    return loss


def gradient_is_exact(loss: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> bool:
    """autograd's gradient of ``loss`` agrees with central differences (float64, step 1e-6:
    truncation error ~1e-12·|f'''|, rounding ~1e-16/1e-6 = 1e-10; gradcheck's atol 1e-5 and
    rtol 1e-3 leave room for both and catch any gradient that is wrong by more)."""
    return torch.autograd.gradcheck(
        loss, (logits.detach().clone().requires_grad_(True),), raise_exception=False
    )


def fixed_logits(
    seed: int = 3, n: int = 8, scale: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, CLASSES, generator=g, dtype=torch.float64)
    return logits, torch.randint(0, CLASSES, (n,), generator=g)


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def resumed_step_is_identical(
    name: str,
    options: dict,
    *,
    epoch: int,
    forget: Callable[[dict], dict],
    steps_before: int = 2,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train ``steps_before`` steps at ``epoch``, save; continue one step. A fresh method on
    a fresh model, loaded from the saved states and *not* told the epoch, takes the same
    step; one loaded from the method state passed through ``forget`` (one entry reset)
    shows that the entry matters.

    Returns the parameters after the uninterrupted step, after the resumed one, and after
    the step of the run that lost part of the method's state."""
    model = model64(0)
    optimizer, method = build64(name, model, options)
    method.begin_epoch(epoch)
    for i in range(steps_before):
        method.step(*batch64(10 + i))
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), method.state_dict()))
    method.step(*batch64(20))
    uninterrupted = parameters(model)

    def resume(method_state: dict) -> dict[str, torch.Tensor]:
        fresh = model64(1)
        fresh_opt, fresh_method = build64(name, fresh, options)
        fresh.load_state_dict(saved[0])
        fresh_opt.load_state_dict(saved[1])
        fresh_method.load_state_dict(method_state)
        fresh_method.step(*batch64(20))
        return parameters(fresh)

    return uninterrupted, resume(saved[2]), resume(forget(copy.deepcopy(saved[2])))
