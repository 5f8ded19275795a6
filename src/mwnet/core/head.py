"""The ``head`` hypergradient: a virtual step of the final linear layer only.

The exact hypergradient needs a second pass through the whole network at the virtual
parameters θ̂, and a second-order (or forward-mode) pass through the training forward.
That is what makes an MW-Net step cost several plain steps. ``head`` approximates the
meta step by freezing the body: only the classifier's final ``nn.Linear`` (W, b) takes
the virtual step. The per-sample losses as functions of the head,

    L_i(W, b) = loss_fn(h_i W^T + b, y_i),   h_i = the head's input in the real forward,

need no pass through the body at all, and the meta loss L_meta(Ŵ, b̂) needs only the meta
batch's head inputs h'_j, from one forward without a graph. Everything else lives in head
space (n x D features, K x D weights), where differentiating through the virtual step is
tiny. The gradient is exact for this restricted problem, not for the full one; when the
body has no trainable parameters the two coincide.

Head inputs are captured with forward hooks that exist only while the reweighter's own
forwards run (installed and removed around each of them), so the user's model never
carries a hook between steps, and steps without a meta update install none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet.core.head_output import check_head_output
from mwnet.core.hypergrad import MetaProblem
from mwnet.core.objective import WeightedLoss
from mwnet.core.reducer import GradientReducer
from mwnet.core.snapshot import ForwardSnapshot
from mwnet.core.virtual_step import AffineStep


class HeadCall:
    """The last call of a watched ``nn.Linear`` during one forward: who, its input, its output."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.inputs: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def hook(self, name: str) -> Callable[..., None]:
        """A forward hook that records calls of the module named ``name``."""

        def record(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            self.name = name
            self.inputs = args[0] if args else kwargs["input"]
            self.output = output

        return record


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _hint(model: nn.Module) -> str:
    names = _linear_names(model)
    shown = ", ".join(repr(n) for n in names[-5:]) or "none"
    return f"the model's nn.Linear modules (from model.named_modules()), last ones: {shown}"


class LinearHead:
    """The classifier's final ``nn.Linear``: found, checked, and watched during forwards.

    With ``name=None`` the head is detected at the first meta update as the last
    ``nn.Linear`` that ran in the forward, and accepted only if its output *is* the model's
    output (the same tensor, or an equal one): otherwise the loss would not be a function
    of that layer's output alone and the head problem would silently be a different one.
    With a name, the layer's output is taken as what ``loss_fn`` receives, even if the
    model post-processes it without parameters (a fixed scale, a tuple). Either way, on
    every meta update, nothing trainable may act on the head's output before the model
    returns it (:mod:`mwnet.core.head_output`): not a layer after a named hidden one, not a
    learnable scale that starts as the identity and drifts.

    Args:
        model: the reweighter's model.
        names: names of the parameters the virtual step may move (trainable and held by
            the optimizer), as :func:`mwnet.core.parameters.virtual_parameters` gives them.
        params: those parameters, in the same order.
        name: the head's module name, or None to detect it.
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        params: list[torch.Tensor],
        name: str | None = None,
    ) -> None:
        self.model = model
        self.explicit = name is not None
        self._movable = {id(p): i for i, p in enumerate(params)}
        self._names = names
        self.name: str | None = None
        self.module: nn.Linear | None = None
        self.indices: list[int] = []
        """Positions of the head's weight (and bias) in the reweighter's parameter list."""
        if name is not None:
            self._bind(name)

    def _bind(self, name: str) -> None:
        """Adopt the module ``name`` as the head, after checking it can take a virtual step."""
        modules = dict(self.model.named_modules())
        if name not in modules:
            raise ValueError(
                f"head={name!r} is not a module of the model; name the final linear layer, "
                f"one of {_hint(self.model)}"
            )
        module = modules[name]
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"head={name!r} is a {type(module).__name__}, not an nn.Linear; the head mode "
                f"steps a final linear layer only. Name one of {_hint(self.model)}"
            )
        indices = []
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if not p.requires_grad:
                raise ValueError(
                    f"head parameter {full!r} is frozen (requires_grad=False); hypergrad='head' "
                    "moves the head in the virtual step, so the head must be trainable"
                )
            if id(p) not in self._movable:
                raise ValueError(
                    f"head parameter {full!r} is not in the optimizer; hypergrad='head' steps "
                    "the head at its param group's learning rate, so the optimizer must hold it"
                )
            indices.append(self._movable[id(p)])
        self.name, self.module, self.indices = name, module, indices

    @contextmanager
    def watching(self) -> Iterator[HeadCall]:
        """Record the head's last call during the block (every ``nn.Linear``'s while the head
        is still undetected); the hooks are removed when the block ends, even on error."""
        call = HeadCall()
        if self.module is not None:
            targets = [(self.name or "", self.module)]
        else:
            targets = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        handles = [m.register_forward_hook(call.hook(n), with_kwargs=True) for n, m in targets]
        try:
            yield call
        finally:
            for handle in handles:
                handle.remove()

    def features(self, call: HeadCall, output: Any) -> torch.Tensor:
        """The head's input in the watched training forward, detached from the body.

        On the first call without a name this is where the head is detected and checked.
        """
        if call.name is None or call.inputs is None:
            if self.module is not None:
                raise ValueError(
                    f"head {self.name!r} did not run in the model's forward; name the final "
                    f"linear layer the output flows through, one of {_hint(self.model)}"
                )
            raise ValueError(
                "hypergrad='head' found no nn.Linear in the model's forward; pass "
                'head="<module name>" naming the final linear layer (an nn.Linear)'
            )
        if self.module is None:
            if not _same(call.output, output):
                raise ValueError(
                    f"hypergrad='head' cannot detect the output layer: the last nn.Linear that "
                    f"ran ({call.name!r}) does not produce the model's output (the model "
                    "post-processes it, or returns a tuple or dict). Pass "
                    'head="<module name>" naming the final nn.Linear, one of '
                    f"{_hint(self.model)}; its output is then what loss_fn receives"
                )
            self._bind(call.name)
        check_head_output(self.model, call.name, call.output, output, self.explicit)
        return call.inputs.detach()

    def meta_features(self, snapshot: ForwardSnapshot, x_meta: torch.Tensor) -> torch.Tensor:
        """The head's input on the meta batch: one forward without a graph, in the module's
        own mode, on copies of the buffers (running statistics do not move)."""
        with torch.no_grad(), self.watching() as call:
            functional_call(self.model, snapshot.buffer_copies(), (x_meta,))
        if call.inputs is None:
            raise ValueError(f"head {self.name!r} did not run in the meta batch's forward")
        return call.inputs

    def logits(self, theta: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        """The head applied with the parameters ``theta`` (keyed by parameter name)."""
        assert self.module is not None
        weight = theta[self._names[self.indices[0]]]
        bias = theta[self._names[self.indices[1]]] if len(self.indices) > 1 else None
        return F.linear(features, weight, bias)


def _same(a: Any, b: Any) -> bool:
    """``a`` is ``b``, or both are equal tensors (a no-op view or copy after the head)."""
    if a is b:
        return True
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def head_problem(
    head: LinearHead,
    *,
    names: list[str],
    params: list[torch.Tensor],
    features: torch.Tensor,
    y: torch.Tensor,
    meta_features: torch.Tensor,
    coefficients: torch.Tensor,
    step: AffineStep,
    losses_fn: Callable[[torch.Tensor], WeightedLoss],
    unweighted_mean: Callable[[WeightedLoss], torch.Tensor | None],
    meta_loss_fn: Callable[[torch.Tensor], torch.Tensor],
    weight_params: list[torch.Tensor],
    reducer: GradientReducer | None = None,
) -> MetaProblem:
    """The meta problem restricted to the head, in head space.

    ``names``/``params``/``step`` cover the head's parameters only; ``losses_fn`` maps
    head outputs to the training objective's per-sample terms for ``y``,
    ``unweighted_mean`` those terms to the mean of their unweighted part, and
    ``meta_loss_fn`` head outputs on the meta batch to the scalar meta loss. The returned
    problem's losses are attached to a graph over (W, b) alone, so any hypergradient over
    it never touches the body.
    """
    theta = dict(zip(names, params, strict=True))
    terms = losses_fn(head.logits(theta, features))

    def losses_at(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return losses_fn(head.logits(values, features)).weighted

    def meta_loss_at(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return meta_loss_fn(head.logits(values, meta_features))

    return MetaProblem(
        names=names,
        params=params,
        losses=terms.weighted,
        coefficients=coefficients,
        unweighted_mean=unweighted_mean(terms),
        step=step,
        meta_loss_at=meta_loss_at,
        losses_at=losses_at,
        weight_params=weight_params,
        reducer=reducer,
    )
