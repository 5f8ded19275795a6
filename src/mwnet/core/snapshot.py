"""Running the model again as it ran in the real forward, without touching its state.

Meta-learning needs extra passes (a meta forward at the virtual parameters, a
forward-mode replay of the training forward) that must not move BatchNorm running
statistics or other buffers, and that must see the same dropout masks as the real
forward. Buffers are recorded as they were *before* the real forward, as the authors'
copied "meta model" saw them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ForwardSnapshot:
    """The model's buffers and the RNG state just before a forward pass."""

    buffers: dict[str, torch.Tensor]
    cpu_rng: torch.Tensor
    cuda_rng: tuple[int, torch.Tensor] | None

    @classmethod
    def capture(cls, model: nn.Module, device: torch.device) -> ForwardSnapshot:
        """Record the state now; call it right before the forward to be replayed."""
        cuda = None
        if device.type == "cuda":
            cuda = (device.index or 0, torch.cuda.get_rng_state(device))
        return cls(
            buffers={k: b.clone() for k, b in model.named_buffers()},
            cpu_rng=torch.get_rng_state(),
            cuda_rng=cuda,
        )

    def buffer_copies(self) -> dict[str, torch.Tensor]:
        """Fresh copies of the recorded buffers, for one pass to update and throw away."""
        return {k: b.clone() for k, b in self.buffers.items()}

    def rng(self) -> RngState:
        """The recorded RNG state, as an :class:`RngState`."""
        return RngState(self.cpu_rng, self.cuda_rng)

    @contextmanager
    def replaying_rng(self) -> Iterator[None]:
        """Run a block with the recorded RNG state (same dropout masks), restoring it after."""
        devices = [self.cuda_rng[0]] if self.cuda_rng else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_rng)
            if self.cuda_rng:
                torch.cuda.set_rng_state(self.cuda_rng[1], self.cuda_rng[0])
            yield


@dataclass(frozen=True)
class RngState:
    """The generator state of the CPU (and of one CUDA device) at one point of a forward.

    A replay that skips part of a forward sets it where the skipped part left it, so the
    random ops after it (dropout) draw what they drew the first time.
    """

    cpu: torch.Tensor
    cuda: tuple[int, torch.Tensor] | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = None
        if device.type == "cuda":
            cuda = (device.index or 0, torch.cuda.get_rng_state(device))
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        """Set the generators to this state (not scoped: the caller forks if it must)."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda[1], self.cuda[0])
