"""``torch.compile`` for the passes of a meta step that a compiled graph can take.

What compiled graphs can and cannot do here (torch 2.13, inductor, CPU):

* forward-mode AD: dual tensors passed into a graph compiled for plain tensors fail
  (inductor's kernels call ``out=`` variants that have no JVP rule). Compiling the whole
  forward-mode pass instead, dual tensors made and unpacked inside the compiled function,
  works: aot_autograd traces the tangent computation into ordinary ops
  (:class:`CompiledLossesJvp`).
* double backward: no (aot_autograd), so ``reverse``, which differentiates through the
  training graph's gradient, cannot compile that graph.
* module hooks added after compilation do not run inside the compiled forward, so the
  ``head`` mode cannot capture its features from one.
* backpropagating twice through one graph (``fast``'s virtual-step gradient keeps the graph
  for the real update) needs aot_autograd's buffer donation off; it is switched off for
  every call made through :class:`CompiledForward`. Graphs are compiled for static shapes:
  a new batch size (an epoch's last, smaller batch) compiles a graph of its own, since a
  dynamic-shape graph compiles its backward later, during the backward pass, outside that
  switch, and then refuses the second backward.
* forward-mode AD under autocast: tracing the JVP, a batch norm's output comes out in
  bfloat16 with a float32 tangent, and the next convolution refuses the mix ("Input type
  (torch.float32) and weight type (torch.bfloat16) should be the same"), where eager
  forward-mode AD runs. Under autocast the JVP therefore runs eagerly
  (:func:`compiled_jvp_usable`); the other passes stay compiled.
* random ops must draw exactly what eager mode draws, because the eager JVP replays the
  training forward from the same RNG state and must see the same dropout masks. Inductor's
  own random numbers differ, so these graphs are built with ``fallback_random``.

So ``fast`` compiles all of its passes: the training forward and its backwards, the meta
forward at the virtual parameters and its backward, and the JVP; only the tiny weighting
net and the optimizers stay eager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch._functorch.config as functorch_config
import torch.autograd.forward_ad as fwad
from torch import nn
from torch.func import functional_call

from mwnet.core.hypergrad import LossesJvp
from mwnet.core.snapshot import ForwardSnapshot

COMPILE_OPTIONS = {"fallback_random": True}
"""Inductor options of every compiled pass: eager-identical random draws (see above)."""


def compiled_jvp_usable() -> bool:
    """False under autocast (CPU or CUDA), where the compiled JVP fails to trace (see the
    module docstring) and the eager one is used instead."""
    return not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


class CompiledForward:
    """A compiled callable, called with aot_autograd's buffer donation switched off (the
    training graph is backpropagated twice; donation would forbid the second pass)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = torch.compile(fn, options=COMPILE_OPTIONS, dynamic=False)

    def __call__(self, *args: Any) -> Any:
        with functorch_config.patch(donated_buffer=False):
            return self._fn(*args)


def compiled_module(model: nn.Module) -> CompiledForward:
    """``model(x)``, compiled; its parameters and buffers stay the module's own."""
    return CompiledForward(model)


def compiled_functional(model: nn.Module) -> CompiledForward:
    """``(tensors, x) -> functional_call(model, tensors, (x,))``, compiled: the model run
    with substitute parameters and buffers, as the meta forward needs."""

    def call(tensors: dict[str, torch.Tensor], x: Any) -> Any:
        return functional_call(model, tensors, (x,))

    return CompiledForward(call)


def eager_functional(model: nn.Module) -> Callable[[dict[str, torch.Tensor], Any], Any]:
    """The same call as :func:`compiled_functional`, not compiled."""

    def call(tensors: dict[str, torch.Tensor], x: Any) -> Any:
        return functional_call(model, tensors, (x,))

    return call


class CompiledLossesJvp:
    """Per-sample ⟨∇_θ L_i, t⟩ of a model's training losses, as one compiled function.

    The dual level lives inside the compiled function: that is what lets the compiler see
    (and fuse) the tangent computation, where dual tensors handed to a compiled graph fail.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]):
        def losses_jvp(
            primals: dict[str, torch.Tensor],
            tangents: dict[str, torch.Tensor],
            buffers: dict[str, torch.Tensor],
            x: Any,
            y: torch.Tensor,
        ) -> torch.Tensor | None:
            with fwad.dual_level():
                duals = {k: fwad.make_dual(v, tangents[k]) for k, v in primals.items()}
                losses = loss_fn(functional_call(model, {**duals, **buffers}, (x,)), y)
                return fwad.unpack_dual(losses).tangent

        self._fn = CompiledForward(losses_jvp)

    def replaying(
        self, names: list[str], snapshot: ForwardSnapshot, x: Any, y: torch.Tensor
    ) -> LossesJvp:
        """``(θ, t) -> ⟨∇_θ L_i, t⟩`` for the batch ``(x, y)``, replaying the forward that
        ``snapshot`` recorded: its RNG state (the same dropout masks) and copies of its
        buffers. None when the losses do not depend on the parameters."""

        def losses_jvp(
            primals: list[torch.Tensor], tangents: list[torch.Tensor]
        ) -> torch.Tensor | None:
            with snapshot.replaying_rng():
                return self._fn(
                    dict(zip(names, primals, strict=True)),
                    dict(zip(names, tangents, strict=True)),
                    snapshot.buffer_copies(),
                    x,
                    y,
                )

        return losses_jvp
