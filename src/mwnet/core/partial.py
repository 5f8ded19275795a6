"""The ``partial`` hypergradient: the virtual step of a top part of the model only.

``fast`` moves every parameter in the virtual step, so its meta forward, meta backward
and forward-mode replay run through the whole network. ``head`` moves the final linear
layer only. ``partial`` sits between the two: a chosen *top* of the model (named modules
or parameters; by default the last stage and the classifier) takes the virtual step, and
the *bottom* is frozen for the meta step only (the real update trains every parameter as
usual). Its meta problem is

    L_meta(θ̂_top(Θ)),   θ̂_top = a_top − s·∇_top [Σ_i c_i(Θ) L_i(θ) + B(θ)],

with the bottom held at its current parameters, and its hypergradient is the exact one of
this restricted problem, computed the way ``fast`` computes its own (first-order passes
and one JVP) but through the top alone:

* ``∇_top`` is a backward through the top of the training graph only (autograd runs no
  node that does not lead to a requested parameter);
* the bottom's activations are reused, not recomputed. The bottom is cut into *frozen
  blocks*: the largest submodules that hold no top parameter but some parameter or
  buffer. A frozen block's calls that begin before any module holding a top parameter
  has been called cannot depend on the top; the training forward records their outputs,
  and the JVP replays the forward with each such call answered by its recorded output.
  The parameter-free glue between blocks (a ReLU, a flatten) runs again on those outputs;
* the meta batch's bottom runs once, without a graph, and stops where the top begins;
  the meta forward at θ̂ replays it in the same way, so its graph covers the top only.

A frozen block called *after* the top has begun (a block fed by the top) is not replayed
but run again, with its frozen parameters, on the live input: the result stays exact
whatever the top is, only cheaper when the top is the end of the network. The one
assumption is that a top parameter is used inside the forward of a module that holds it
(true of ordinary layers, and of tied weights registered in both modules; not of a forward
that reads another module's weight directly).

Random ops see what they saw in the recorded forward: the RNG state after each recorded
call is kept and set again when the replay passes that call, so dropout in the top draws
the training forward's masks in the JVP, and the meta batch's masks are those of one
forward of it. Recorded outputs are copies, so in-place ops in either forward (an in-place
ReLU after a recorded BatchNorm) change neither the recording nor the training graph.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from mwnet.core.snapshot import ForwardSnapshot, RngState
from mwnet.core.tangents import ForwardRecord


def _holds_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_container(module: nn.Module) -> bool:
    """A module with submodules that hold parameters (a stage, a block), not one layer."""
    return any(_holds_parameters(c) for c in module.children())


def _named_parameter_children(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}{n}", c) for n, c in module.named_children() if _holds_parameters(c)]


def default_top(model: nn.Module) -> list[str]:
    """Module names of the default top: the last stage of the body and the classifier.

    Read from the module tree, in the order submodules are registered (for the usual
    models, the order they run): wrappers holding all parameters in one child are looked
    through; the last child holding parameters is the classifier; the children before it
    are the stages (or, when there is a single container before it, that container's
    children: ``SmallCNN.features``' two blocks). The top is the last stage that is a
    container (has submodules with parameters), every child registered after it, and the
    classifier: ``stage3, fc`` for the CIFAR ResNets, ``group3, bn, fc`` for WRN,
    ``features.1, head`` for ``cnn_small``. A model without such stages (an MLP with one
    hidden layer) gets every layer in the top, which is ``fast``'s problem.
    """
    level, prefix = model, ""
    children = _named_parameter_children(level, prefix)
    while len(children) == 1 and not any(True for _ in level.parameters(recurse=False)):
        name, level = children[0]
        prefix = f"{name}."
        children = _named_parameter_children(level, prefix)
    if len(children) < 2:
        return [n for n, _ in children]
    *stages, classifier = children
    if len(stages) == 1 and _is_container(stages[0][1]):
        inner = _named_parameter_children(stages[0][1], f"{stages[0][0]}.")
        if len(inner) >= 2:
            stages = inner
    containers = [i for i, (_, m) in enumerate(stages) if _is_container(m)]
    start = containers[-1] if containers else len(stages) - 1
    return [n for n, _ in stages[start:]] + [classifier[0]]


def modules_from(model: nn.Module, name: str) -> list[str]:
    """The module ``name`` and every module registered after it, at its own level and at
    each level above: the top that begins at ``name`` (``"stage3.4"`` in ResNet-32:
    ``["stage3.4", "fc"]``), for a model whose modules run in their registration order."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ValueError(f"{name!r} is not a module of the model; {_hint(model)}")
    parts = name.split(".")
    out = [name]
    for depth in range(len(parts), 0, -1):
        parent_name = ".".join(parts[: depth - 1])
        parent = modules[parent_name]
        prefix = f"{parent_name}." if parent_name else ""
        names = [n for n, _ in parent.named_children()]
        after = names[names.index(parts[depth - 1]) + 1 :]
        out += [f"{prefix}{n}" for n in after if _holds_parameters(getattr(parent, n))]
    return out


def _hint(model: nn.Module) -> str:
    shown = ", ".join(repr(n) for n, c in model.named_children() if _holds_parameters(c))
    return f"the model's top-level modules with parameters are {shown or 'none'}"


def parse_top(spec: str | Sequence[str] | None) -> list[str] | None:
    """``"stage3,fc"`` or ``["stage3", "fc"]`` as a list of names; None stays None."""
    if spec is None:
        return None
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise ValueError(
            f"partial={spec!r} must name modules or parameters, comma-separated "
            '(e.g. partial="stage3,fc"), or be None for the default top'
        )
    return names


@dataclass
class _Call:
    output: Any
    """The call's output, copied (a tensor, or a structure of tensors)."""
    rng: RngState
    """The RNG state right after the call."""


@dataclass
class Recording:
    """The frozen blocks' upstream calls in one forward (see the module docstring)."""

    rng_before: RngState
    calls: dict[int, list[_Call]] = field(default_factory=dict)
    """Recorded calls by frozen block (index into :attr:`TopPart.blocks`), in call order."""
    top_started: bool = False
    ops: ForwardRecord | None = None
    """With ``record_ops``: the outputs the JVP's tangent replay reuses, recorded outside
    the recorded frozen-block calls (which its replay answers without running them)."""
    _pausing: list[bool] = field(default_factory=list)


class _TopReached(Exception):
    """Ends a no-grad bottom-only forward where the top begins."""


def _copy(output: Any) -> Any:
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, output)


class TopPart:
    """The parameters that take ``partial``'s virtual step, and the model's frozen blocks.

    Args:
        model: the reweighter's model.
        names: names of the parameters the virtual step may move (trainable and held by
            the optimizer), as :func:`mwnet.core.parameters.virtual_parameters` gives them.
        params: those parameters, in the same order.
        spec: module or parameter names whose parameters form the top (a name selects
            every parameter whose dotted name equals it or starts with it and a dot), as a
            comma list or a sequence; None: :func:`default_top` (every parameter where that
            finds no stages).
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        params: list[torch.Tensor],
        spec: str | Sequence[str] | None = None,
    ) -> None:
        chosen = parse_top(spec)
        self.explicit = chosen is not None
        self.spec = chosen if chosen is not None else default_top(model)
        all_names = [n for n, _ in model.named_parameters()]
        movable = set(names)
        picked: set[str] = set() if self.spec else movable
        for entry in self.spec:
            matches = [n for n in all_names if _within(n, entry)]
            if not matches:
                raise ValueError(
                    f"partial names {entry!r}, which holds no parameter of the model; name "
                    f"modules or parameters of the top (e.g. the last stage and the "
                    f"classifier); {_hint(model)}"
                )
            usable = [n for n in matches if n in movable]
            if not usable:
                raise ValueError(
                    f"partial names {entry!r}, whose parameters are all frozen "
                    "(requires_grad=False) or not in the optimizer; the top takes the virtual "
                    "step, so it must be trainable and held by the optimizer"
                )
            picked.update(usable)
        self.model = model
        self.indices = [i for i, n in enumerate(names) if n in picked]
        """Positions of the top's parameters in the reweighter's parameter list."""
        self.names = [names[i] for i in self.indices]
        top_ids = {id(params[i]) for i in self.indices}
        self.blocks = _frozen_blocks(model, top_ids)
        """(name, module) of each frozen block, the largest submodules without a top
        parameter that hold a parameter or a buffer."""
        self._owners = [
            m
            for m in _unique_modules(model)
            if any(p is not None and id(p) in top_ids for p in m._parameters.values())
        ]

    @property
    def is_everything(self) -> bool:
        """No frozen block: the top's problem is the whole model's (``fast``'s)."""
        return not self.blocks

    @contextmanager
    def recording(
        self, device: torch.device, stop_at_top: bool = False, record_ops: bool = False
    ) -> Iterator[Recording]:
        """Record the frozen blocks' upstream calls of the forward run in the block; with
        ``stop_at_top`` the forward ends (silently) where the first top module is called;
        with ``record_ops`` the top's ops are recorded too (:class:`ForwardRecord`)."""
        record = Recording(RngState.capture(device))
        handles = []
        if self.blocks:
            begins = self._top_begins(record, stop_at_top)
            for owner in self._owners:
                handles.append(owner.register_forward_pre_hook(begins))
            for index, (_, module) in enumerate(self.blocks):
                handles.append(module.register_forward_pre_hook(self._enter(record)))
                handles.append(module.register_forward_hook(self._record(record, index, device)))
        ops = ForwardRecord() if record_ops else nullcontext()
        try:
            with ops:
                record.ops = ops if record_ops else None
                yield record
        except _TopReached:
            pass
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _top_begins(record: Recording, stop: bool):
        def pre_hook(module: nn.Module, args: Any) -> None:
            record.top_started = True
            if stop:
                raise _TopReached

        return pre_hook

    @staticmethod
    def _enter(record: Recording):
        def pre_hook(module: nn.Module, args: Any) -> None:
            pause = record.ops is not None and not record.top_started
            record._pausing.append(pause)
            if pause:
                record.ops.paused += 1

        return pre_hook

    @staticmethod
    def _record(record: Recording, index: int, device: torch.device):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if record._pausing and record._pausing.pop() and record.ops is not None:
                record.ops.paused -= 1
            if not record.top_started:
                call = _Call(_copy(output), RngState.capture(device))
                record.calls.setdefault(index, []).append(call)

        return hook

    @contextmanager
    def replaying(self, record: Recording, from_start: bool = False) -> Iterator[None]:
        """Run the forward in the block with each recorded call of a frozen block answered
        by its recorded output (and the RNG set to where that call left it); with
        ``from_start`` the RNG is first set to where the recorded forward began."""
        if from_start:
            record.rng_before.restore()
        used = [0] * len(self.blocks)
        patched = []
        for index, (_, module) in enumerate(self.blocks):
            own = module.__dict__.get("forward")
            run = own if own is not None else type(module).forward.__get__(module)
            patched.append((module, own))
            module.forward = _stub(record.calls.get(index, []), used, index, run)
        try:
            yield
        finally:
            for module, own in patched:
                if own is None:
                    del module.forward
                else:
                    module.forward = own
        for index, (name, _) in enumerate(self.blocks):
            if used[index] < len(record.calls.get(index, [])):
                raise RuntimeError(
                    f"hypergrad='partial': the frozen block {name!r} ran {used[index]} time(s) "
                    f"in a replay of the forward but {len(record.calls[index])} time(s) when "
                    "it was recorded; the partial step needs a forward whose module calls do "
                    "not depend on the data. Use hypergrad='fast' for this model"
                )

    def meta_recording(
        self, snapshot: ForwardSnapshot, x_meta: Any, device: torch.device
    ) -> Recording:
        """The meta batch's bottom: one forward without a graph, in the module's own mode,
        on copies of the buffers, ended where the top begins."""
        with torch.no_grad(), self.recording(device, stop_at_top=True) as record:
            if self.blocks:
                functional_call(self.model, snapshot.buffer_copies(), (x_meta,))
        return record


def _stub(calls: list[_Call], used: list[int], index: int, run: Any) -> Any:
    """A frozen block's forward during a replay: its recorded calls first, then ``run``."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        i = used[index]
        used[index] += 1
        if i < len(calls):
            calls[i].rng.restore()
            return calls[i].output
        return run(*args, **kwargs)

    return forward


def _within(name: str, entry: str) -> bool:
    return name == entry or name.startswith(f"{entry}.")


def _unique_modules(model: nn.Module) -> list[nn.Module]:
    return list({id(m): m for m in model.modules()}.values())


def _frozen_blocks(model: nn.Module, top_ids: set[int]) -> list[tuple[str, nn.Module]]:
    blocks: dict[int, tuple[str, nn.Module]] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if any(id(p) in top_ids for p in child.parameters()):
                walk(child, f"{full}.")
            elif _holds_parameters(child) or any(True for _ in child.buffers()):
                blocks.setdefault(id(child), (full, child))

    walk(model, "")
    return list(blocks.values())
