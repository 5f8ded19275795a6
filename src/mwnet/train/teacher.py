"""An exponential-moving-average (EMA) teacher of a model, as CMW-Net-SL uses it.

CMW-Net-SL trains without clean data and leans on a slowly moving copy of the model:
its softmax is the pseudo-label that the learned weight interpolates against, and its
per-sample losses pick the pseudo-meta set (:func:`mwnet.data.select_pseudo_meta`).
The teacher here follows the authors' code exactly:

* It starts as a copy of the model (parameters *and* buffers).
* After every optimizer step, each parameter moves as
  ``θ_ema <- d·θ_ema + (1 - d)·θ`` (``d = 0.997``), from the first step on.
* Buffers (BatchNorm running statistics) are never averaged or copied from the
  student: they move only through the teacher's own forward passes in train mode,
  which :meth:`EmaTeacher.soft_labels` makes on every training batch.
* For asymmetric noise the teacher is frozen after epoch 150 (``d = 1``); its
  parameters then stay fixed, but its BatchNorm statistics still follow its own
  train-mode forward passes, as in the authors' code.

Why not ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d),
use_buffers=False)``: it differs in two ways that matter here. Its first
``update_parameters`` *copies* the student's parameters instead of averaging them
(``n_averaged == 0``), and with ``use_buffers=False`` every update *copies the student's
buffers* into the average, so the teacher's BatchNorm statistics would be the student's,
not its own. It also keeps the decay inside a closure, out of ``state_dict``, so a
frozen teacher would resume unfrozen. Hence this small class.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_EMA_DECAY = 0.997
"""The decay of the authors' CMW-Net-SL runs (``--ema 0.997``)."""

_STATE_KEYS = frozenset({"module", "decay", "num_updates"})


class EmaTeacher:
    """A gradient-free copy of ``model`` whose parameters trail it by an EMA.

    Call :meth:`update` after every optimizer step of the student. Use
    :meth:`soft_labels` for the pseudo-labels of a training batch (train mode: the
    teacher's BatchNorm statistics move, as in the authors' code) and :meth:`scores` for
    the per-sample losses that select the pseudo-meta set (eval mode: nothing moves).

    The teacher lives on the device and in the dtype of ``model`` at construction;
    :attr:`module` is the teacher network itself, for evaluation or for moving it.
    Its parameters never require gradients, so nothing the student does reaches it.

    Args:
        model: the student. Pass the plain module (not a ``DistributedDataParallel`` or
            ``torch.compile`` wrapper), and the same kind of module to :meth:`update`,
            because parameters are matched by name.
        decay: ``d`` in ``θ_ema <- d·θ_ema + (1 - d)·θ``; in ``[0, 1]``, ``1`` = frozen.
    """

    def __init__(self, model: nn.Module, decay: float = DEFAULT_EMA_DECAY) -> None:
        self._decay = _check_decay(decay)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        for p in self.module.parameters():
            p.grad = None
        self._names = [name for name, _ in self.module.named_parameters()]
        self._params = [p for _, p in self.module.named_parameters()]
        self.num_updates = 0

    @property
    def decay(self) -> float:
        """The current EMA decay; ``1.0`` once frozen."""
        return self._decay

    @property
    def frozen(self) -> bool:
        """Whether updates leave the parameters unchanged (decay 1)."""
        return self._decay == 1.0

    def freeze(self) -> None:
        """Stop following the student: decay 1 from now on, and saved as such.

        The authors freeze the teacher after epoch 150 for asymmetric noise. Only the
        parameters freeze; BatchNorm statistics still move in :meth:`soft_labels`.
        """
        self._decay = 1.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every teacher parameter towards ``model``'s: ``d·θ_ema + (1 - d)·θ``.

        Call it once after each optimizer step. Buffers are left alone. A frozen teacher
        only counts the step, so its parameters stay bit-identical.

        Raises:
            ValueError: ``model``'s parameters differ in name or shape from the teacher's.
        """
        current = self._matching_params(model)
        self.num_updates += 1
        if self.frozen:
            return
        d = self._decay
        # The authors' arithmetic, param_ema.mul_(d).add_(param, alpha=1 - d), batched.
        torch._foreach_mul_(self._params, d)
        torch._foreach_add_(self._params, current, alpha=1.0 - d)

    @torch.no_grad()
    def soft_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's class probabilities for a training batch, ``(B, K)`` float32.

        Runs the teacher in *train* mode, as the authors do for the pseudo-labels, so
        BatchNorm normalises with the batch's statistics and the teacher's running
        statistics move (dropout, if any, is active too). No gradient is recorded.
        """
        self.module.train()
        return F.softmax(self.module(x).float(), dim=1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy of the teacher on labels ``y``, ``(B,)`` float32.

        Runs in *eval* mode, as the authors do when scoring the training set for the
        pseudo-meta set: each score depends on its sample alone, and no running
        statistic moves. Feed un-augmented inputs and the observed labels.
        """
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"scores needs one label per input, got {x.shape[0]} inputs and labels of "
                f"shape {tuple(y.shape)}; pass a 1-d label tensor of the batch"
            )
        self.module.eval()
        return F.cross_entropy(self.module(x).float(), y, reduction="none")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the network (parameters and buffers),
        the decay (so a frozen teacher stays frozen) and the update count.

        Holds only tensors and plain numbers, so ``torch.load(weights_only=True)`` reads
        it. As with ``nn.Module.state_dict``, the tensors are the live ones: save or copy
        them before training on.
        """
        return {
            "module": self.module.state_dict(),
            "decay": self._decay,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the saved decay replaces the constructor's.

        Raises:
            ValueError: missing or unknown keys, a bad decay or count, or a network
                state that does not fit this teacher's architecture.
        """
        if not isinstance(state, Mapping) or set(state) != _STATE_KEYS:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"not an EmaTeacher state: expected keys {sorted(_STATE_KEYS)}, got {got}; "
                "pass what EmaTeacher.state_dict() returned"
            )
        decay = _check_decay(state["decay"])
        count = state["num_updates"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"EmaTeacher state has num_updates={count!r}; expected a non-negative integer"
            )
        self._check_fits(state["module"])
        self.module.load_state_dict(state["module"], strict=True)
        self._decay = decay
        self.num_updates = count

    def _check_fits(self, saved: Any) -> None:
        """Refuse a network state that does not fit, before anything is overwritten."""
        fix = "build the teacher from the architecture the checkpoint was saved with"
        if not isinstance(saved, Mapping):
            raise ValueError(f"EmaTeacher state 'module' is not a state dict; {fix}")
        own = self.module.state_dict()
        missing = sorted(set(own) - set(saved))
        unknown = sorted(set(saved) - set(own))
        if missing or unknown:
            raise ValueError(
                f"EmaTeacher state does not fit this model (missing {missing[:3]}, "
                f"unexpected {unknown[:3]}); {fix}"
            )
        for key, value in own.items():
            other = saved[key]
            if not isinstance(other, torch.Tensor) or other.shape != value.shape:
                shape = tuple(other.shape) if isinstance(other, torch.Tensor) else other
                raise ValueError(
                    f"EmaTeacher state has {key!r} of shape {shape}, the teacher's is "
                    f"{tuple(value.shape)}; {fix}"
                )

    def _matching_params(self, model: nn.Module) -> list[torch.Tensor]:
        named = list(model.named_parameters())
        if len(named) != len(self._names):
            raise ValueError(
                f"update() got a model with {len(named)} parameters, the teacher has "
                f"{len(self._names)}; pass the student the teacher was built from"
            )
        out = []
        for (name, p), own_name, own in zip(named, self._names, self._params, strict=True):
            if name != own_name or p.shape != own.shape:
                raise ValueError(
                    f"update() got parameter {name!r} {tuple(p.shape)} where the teacher has "
                    f"{own_name!r} {tuple(own.shape)}; pass the same (unwrapped) module the "
                    "teacher was built from"
                )
            out.append(p.detach())
        return out


def _check_decay(decay: Any) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise ValueError(f"EMA decay must be a number in [0, 1], got {decay!r}")
    if not math.isfinite(decay) or not 0.0 <= decay <= 1.0:
        raise ValueError(
            f"EMA decay must be in [0, 1] (0.997 in CMW-Net-SL, 1 to freeze), got {decay!r}"
        )
    return float(decay)
