"""The JVP of the training losses without recomputing the training forward.

``fast`` needs ⟨∇_θ L_i, t⟩ for every sample, one forward-mode pass at θ, the parameters
the training forward has just run with. Eager forward-mode AD runs every op again on
(primal, tangent) pairs: each convolution costs three convolutions (the primal, x * Ẇ and
ẋ * W), and batch norm's tangent rule is a composite of many full-size ops. Here the
replay reuses what the training forward computed:

* :class:`ForwardRecord`, a torch function mode around the training forward, keeps the
  outputs of its convolutions, linear layers and batch norms (references to tensors the
  autograd graph holds anyway, not copies), and a train-mode batch norm's batch mean and
  inverse standard deviation, which its kernel computes anyway: the forward calls the
  kernel ``F.batch_norm`` calls, ``torch._batch_norm_impl_index``, with the same arguments,
  so the output, the graph and the running statistics are the ones ``F.batch_norm`` makes;
* :class:`TangentReplay`, around the JVP's forward, answers each of those calls with the
  recorded output as the primal and a tangent computed from the primal input and the
  tangents, so the primal of these ops is never computed again: a convolution or linear
  layer costs conv(ẋ, W) + conv(x, Ẇ) (+ ḃ); a train-mode batch norm's tangent is
  γσ⁻¹(ẋ − mean ẋ − x̂·mean(ẋx̂)) + γ̇x̂ + β̇, which is batch norm's own backward kernel
  applied to ẋ (its Jacobian in the input is symmetric) plus one affine pass: the recorded
  statistics make that pass an eval-mode batch norm (x − mean)·(γ̇σ⁻¹) + β̇, which on a CPU
  costs a tenth of recomputing the statistics (a train-mode batch norm's kernel).

Every other op (activations, pooling, additions, dropout with the replayed RNG, the loss)
runs as ordinary forward-mode AD on the replayed primals, which are bit for bit the
training forward's. The replay checks that it meets the recorded calls in the same order
with the same output shapes (a forward whose calls change between two runs is an error),
and computes a call as plain forward-mode AD where the rule does not apply (eval-mode
batch norm, autocast, a recorded output changed in place after the call, a bias with a
tangent but a weight without one).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_BILINEAR: tuple[Callable[..., Any], ...] = (
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
)
"""Ops linear in the input and in (weight, bias) separately: the tangent is
op(ẋ, W) + op(x, Ẇ, ḃ), with the other arguments (stride, padding, ...) unchanged."""
_RECORDED = frozenset((*_BILINEAR, F.batch_norm))
_BATCH_NORM = inspect.signature(F.batch_norm)


@dataclass
class _Call:
    func: Callable[..., Any]
    output: torch.Tensor
    version: int
    """The output's version counter when recorded: an in-place change after the call
    means the recorded tensor no longer holds that call's output."""
    statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    """A train-mode batch norm's batch mean and inverse standard deviation (per channel),
    where its kernel saved them; None elsewhere."""


_SAVES_MEAN_AND_INVSTD = (0, 1)
"""``_batch_norm_impl_index``'s implementations (native, cuDNN) whose saved tensors are the
batch mean and 1/sqrt(var + eps); for another (MIOpen) the replay recomputes them."""


def _recorded_batch_norm(args, kwargs) -> tuple[torch.Tensor, Any] | None:
    """A train-mode ``F.batch_norm`` call run as ``F.batch_norm`` runs it, keeping the saved
    statistics; None for a call this does not apply to (eval mode, tensor subclasses)."""
    bound = _BATCH_NORM.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    tensors = [a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"]]
    if not a["training"] or any(
        t is not None and type(t) is not torch.Tensor and not isinstance(t, nn.Parameter)
        for t in tensors
    ):
        return None
    F._verify_batch_size(a["input"].size())
    out, saved_mean, saved_invstd, _, impl = torch._batch_norm_impl_index(
        a["input"],
        a["weight"],
        a["bias"],
        a["running_mean"],
        a["running_var"],
        True,
        a["momentum"],
        a["eps"],
        torch.backends.cudnn.enabled,
    )
    channels = a["input"].shape[1]
    usable = (
        impl in _SAVES_MEAN_AND_INVSTD
        and saved_mean.shape == (channels,)
        and saved_invstd.shape == (channels,)
    )
    return out, (saved_mean.detach(), saved_invstd.detach()) if usable else None


class ForwardRecord(TorchFunctionMode):
    """Keeps the output of every convolution, linear layer and batch norm of the forward
    run inside it, in call order, except while ``paused`` (the calls a replay will not
    make: those inside the frozen blocks a partial step answers from its own recording)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.paused = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recorded = None
        if func is F.batch_norm and not self.paused:
            recorded = _recorded_batch_norm(args, kwargs)
        if recorded is not None:
            out, statistics = recorded
            self.calls.append(_Call(func, out, out._version, statistics))
            return out
        out = func(*args, **kwargs)
        if func in _RECORDED and not self.paused and isinstance(out, torch.Tensor):
            self.calls.append(_Call(func, out, out._version))
        return out


class TangentReplay(TorchFunctionMode):
    """Inside ``fwad.dual_level()``: the recorded calls of ``record`` answered by their
    recorded outputs with tangents by the rules above (see the module docstring)."""

    def __init__(self, record: ForwardRecord) -> None:
        super().__init__()
        self.record = record
        self.position = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RECORDED:
            return func(*args, **kwargs)
        call = self._next(func)
        if call.output._version != call.version or _autocasting():
            return _tangent_in_primal_dtype(func(*args, **kwargs))
        primal = call.output.detach()
        if func is F.batch_norm:
            tangent = _batch_norm_tangent(args, kwargs, call.statistics)
        else:
            tangent = _bilinear_tangent(func, args, kwargs)
        if tangent is NotImplemented:
            return func(*args, **kwargs)
        if tangent is None:
            return primal
        if tangent.shape != primal.shape:
            raise RuntimeError(
                f"the replay of the training forward computed a {tuple(tangent.shape)} tangent "
                f"for a {func.__name__} whose recorded output is {tuple(primal.shape)}; the "
                "model's forward differs between two runs on the same batch"
            )
        return fwad.make_dual(primal, tangent)

    def _next(self, func: Callable[..., Any]) -> _Call:
        i = self.position
        self.position += 1
        calls = self.record.calls
        if i >= len(calls) or calls[i].func is not func:
            seen = calls[i].func.__name__ if i < len(calls) else "nothing"
            raise RuntimeError(
                f"the replay of the training forward called {func.__name__} where the training "
                f"forward called {seen} (call {i}); the model's forward must make the same "
                "calls on the same batch. Use low_memory=True, which does not replay it"
            )
        return calls[i]

    def check_complete(self) -> None:
        """Raise unless the replay met every recorded call."""
        if self.position != len(self.record.calls):
            raise RuntimeError(
                f"the replay of the training forward made {self.position} of the "
                f"{len(self.record.calls)} recorded calls; the model's forward must make the "
                "same calls on the same batch. Use low_memory=True, which does not replay it"
            )


def _autocasting() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def _tangent_in_primal_dtype(out: Any) -> Any:
    """``out`` with its tangent in its primal's dtype.

    Under autocast a batch norm whose input carries no tangent (the layers below the kept
    ones of ``famus``) but whose float32 weight does returns a bfloat16 primal with a
    float32 tangent; the next convolution's or linear layer's forward-mode rule then mixes
    the two dtypes and fails. Casting the tangent is what autocast does to the tangent of
    every input it casts, and what the ops give when their input carries the tangent.
    """
    if not isinstance(out, torch.Tensor):
        return out
    primal, tangent = fwad.unpack_dual(out)
    if tangent is None or tangent.dtype == primal.dtype:
        return out
    return fwad.make_dual(primal, tangent.to(primal.dtype))


def _split(t: Any) -> tuple[Any, torch.Tensor | None]:
    if not isinstance(t, torch.Tensor):
        return t, None
    primal, tangent = fwad.unpack_dual(t)
    return primal, tangent


def _bilinear_tangent(func, args, kwargs) -> torch.Tensor | None:
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    rest, options = args[3:], {k: v for k, v in kwargs.items() if k not in ("weight", "bias")}
    x, x_t = _split(x)
    w, w_t = _split(w)
    bias, b_t = _split(bias)
    if w_t is None and b_t is not None:
        return NotImplemented
    terms = []
    if x_t is not None:
        terms.append(func(x_t, w, None, *rest, **options))
    if w_t is not None:
        terms.append(func(x, w_t, b_t, *rest, **options))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else terms[0].add_(terms[1])


def _batch_norm_tangent(
    args, kwargs, statistics: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor | None:
    bound = _BATCH_NORM.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if not a["training"]:
        return NotImplemented
    x, x_t = _split(a["input"])
    w, w_t = _split(a["weight"])
    _, b_t = _split(a["bias"])
    eps = float(a["eps"])
    if x_t is None and w_t is None and b_t is None:
        return None
    zero = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    slope = w_t if w_t is not None else zero
    shift = b_t if b_t is not None else zero
    if statistics is None:  # one train-mode kernel gives γ̇x̂ + β̇ and the statistics
        affine, mean, invstd = torch.native_batch_norm(x, slope, shift, None, None, True, 0.0, eps)
    else:  # (x − mean)·(γ̇σ⁻¹) + β̇ as an eval-mode batch norm of unit variance, no eps
        mean, invstd = statistics
        unit = torch.ones_like(zero)
        affine = torch.native_batch_norm(x, slope * invstd, shift, mean, unit, False, 0.0, 0.0)[0]
    if x_t is None:
        return affine
    weight = w if w is not None else torch.ones_like(zero)
    tangent, _, _ = torch.ops.aten.native_batch_norm_backward(
        x_t, x, weight, None, None, mean, invstd, True, eps, [True, False, False]
    )
    return tangent.add_(affine)
