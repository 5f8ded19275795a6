"""Sums over the ranks of a process group, the one collective data-parallel MW-Net needs;
and a gather, for methods that take a decision over the global batch.

Data-parallel Meta-Weight-Net cannot lean on ``DistributedDataParallel``: its gradient
hooks fire on ``loss.backward()`` of the module, but the virtual step, the meta gradient
and the weighting net's gradient are computed with ``torch.autograd.grad`` over explicit
parameter lists and ``functional_call``, which DDP never sees. So every quantity the
algorithm aggregates is summed here explicitly. Each call flattens its list of tensors
into one buffer (one buffer per dtype), so a step issues a handful of all-reduces
whatever the number of parameter tensors, and the bytes of each call are counted by
category for benchmarks.

Every rank receives the same reduced buffer, so ranks that start identical stay
identical: the same sums go into the same optimizer steps everywhere. One all-gather
(:meth:`GradientReducer.gather`) serves methods that decide over, or mix, the global batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable


@dataclass
class CommCounter:
    """Bytes each rank contributes to all-reduces, by category, and the number of calls."""

    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, category: str, tensor: torch.Tensor) -> None:
        self.bytes[category] += tensor.numel() * tensor.element_size()
        self.calls[category] += 1

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


class GradientReducer:
    """Element-wise sums over the ranks of ``group`` (default: the whole job).

    Args:
        group: a process group of ``torch.distributed``; it must be initialised.
        counter: where the bytes are counted; a fresh :class:`CommCounter` by default.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, counter: CommCounter | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "GradientReducer needs an initialised torch.distributed process group; call "
                "torch.distributed.init_process_group first (torchrun sets the environment)"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.counter = counter if counter is not None else CommCounter()

    def _all_reduce(self, flat: torch.Tensor, category: str) -> torch.Tensor:
        self.counter.add(category, flat)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        return flat

    def sum(self, tensors: Sequence[torch.Tensor], category: str) -> list[torch.Tensor]:
        """The sums over ranks of ``tensors`` (not differentiable), as new tensors.

        One all-reduce per dtype and device among the inputs; the results are views of
        the reduced buffer, in the order of the inputs.
        """
        out: list[torch.Tensor | None] = [None] * len(tensors)
        for indices in _by_kind(tensors):
            parts = [tensors[i].detach().reshape(-1) for i in indices]
            flat = self._all_reduce(torch.cat(parts), category)
            for i, piece in zip(indices, _split(flat, [tensors[i] for i in indices]), strict=True):
                out[i] = piece
        return out  # type: ignore[return-value]

    def sum_differentiable(
        self, tensors: Sequence[torch.Tensor], category: str, backward_category: str
    ) -> list[torch.Tensor]:
        """The sums over ranks of ``tensors``, differentiable.

        If every rank r backpropagates its own objective F_r from the outputs, each rank
        receives ∂(Σ_r F_r)/∂(its inputs): the backward of a sum over ranks is the sum over
        ranks of the output gradients, one all-reduce (counted under
        ``backward_category``). All tensors must share one dtype and device.
        """
        if len({(t.dtype, t.device) for t in tensors}) != 1:
            raise ValueError("sum_differentiable needs tensors of one dtype and device")
        flat = torch.cat([t.reshape(-1) for t in tensors])
        summed = _SumOverRanks.apply(flat, self, category, backward_category)
        return _split(summed, tensors)

    def gather(self, local: torch.Tensor, category: str) -> tuple[torch.Tensor, list[int]]:
        """Every rank's rows of ``local`` (shape ``(n_r, ...)``; ``n_r`` may differ between
        ranks), concatenated in rank order, on every rank, and each rank's ``n_r``: what a
        decision over the global batch (a small-loss selection) needs, so that every rank
        takes the same one. Not differentiable.

        Two all-gathers: the row counts, then the rows padded to the largest count (the
        padding's bytes are counted too). The rows arrive bit for bit as they were sent.
        """
        count = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
        counts = [torch.empty_like(count) for _ in range(self.world_size)]
        self.counter.add(category, count)
        dist.all_gather(counts, count, group=self.group)
        sizes = [int(c) for c in counts]
        kind = local.dtype  # gloo gathers no bool: as bytes, and back
        rows = local.detach().to(torch.uint8) if kind == torch.bool else local.detach()
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        self.counter.add(category, padded)
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(kind), sizes


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, reducer, category, backward_category):  # type: ignore[override]
        ctx.reducer, ctx.backward_category = reducer, backward_category
        return reducer._all_reduce(flat.detach().clone(), category)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        summed = ctx.reducer._all_reduce(grad.contiguous().clone(), ctx.backward_category)
        return summed, None, None, None


def _by_kind(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (dtype, device), groups in order of appearance."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return list(groups.values())


def _split(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [t.numel() for t in like]
    return [piece.view(t.shape) for piece, t in zip(flat.split(sizes), like, strict=True)]
