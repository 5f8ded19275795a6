"""When the weighting net learns: a schedule for the meta interval k, and freezing it.

A meta step costs several plain steps. Two epoch-level rules decide which steps pay it:

* ``meta_interval_schedule``: "K@E,K@E,...": update the weighting net every K-th step
  from epoch E on (E epochs finished); before the first E, the method's ``meta_interval``.
  ``"5@2,20@10"`` with ``meta_interval=1``: every step for 2 epochs, every 5th until epoch
  10, every 20th after. (Not "E:K": YAML reads ``2:5`` as the base-60 number 125.) The
  interval counts steps from the start of training (a step updates when its index is a
  multiple of K), so a change of K at an epoch boundary shifts the next update by fewer
  than K steps.
* freezing: from ``freeze_epoch`` on, or from the first epoch at whose start the
  weighting curve has moved by less than ``freeze_tolerance`` since the start of the
  previous epoch, the weighting net is used as it is: no meta batch, no meta step, a
  plain weighted step (what ``method.mwnet.meta=false`` does with a net from another run). The
  curve is compared on :data:`CURVE_LOSSES`, fixed losses, so every rank of a data-parallel
  run decides alike; the largest change of any weight (of any class cluster's curve, for a
  class-aware net) is what the tolerance bounds.

Both are decided at the start of each epoch from the epoch index and saved state, so a
resumed run makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

CURVE_LOSSES = torch.linspace(0.0, 10.0, 101)
"""Losses at which the freezing rule compares weighting curves (cross-entropy losses of
noisy samples reach about 10; clean ones are far below)."""


def parse_interval_schedule(text: str | None) -> tuple[tuple[int, int], ...]:
    """``"K@E,K@E"`` as ((E, K), ...), epochs strictly increasing; None or "" is empty.

    Raises ValueError naming the expected form.
    """
    if text is None or not str(text).strip():
        return ()
    form = 'the form "K@E,K@E,..." (a meta step every K-th step from epoch E on), e.g. "5@2,20@10"'
    pairs = []
    for part in str(text).split(","):
        interval, sep, epoch = part.strip().partition("@")
        if not sep or not epoch.strip().isdigit() or not interval.strip().isdigit():
            raise ValueError(f"meta_interval_schedule={text!r} must have {form}")
        pairs.append((int(epoch), int(interval)))
    epochs = [e for e, _ in pairs]
    if any(k < 1 for _, k in pairs) or epochs != sorted(set(epochs)):
        raise ValueError(
            f"meta_interval_schedule={text!r}: intervals must be >= 1 and epochs strictly "
            f"increasing; {form}"
        )
    return tuple(pairs)


class UpdateSchedule:
    """Per epoch: the meta interval, and whether to freeze the weighting net from now on."""

    def __init__(
        self,
        meta_interval: int = 1,
        interval_schedule: Sequence[tuple[int, int]] = (),
        freeze_epoch: int | None = None,
        freeze_tolerance: float | None = None,
    ) -> None:
        if freeze_epoch is not None and freeze_epoch < 1:
            raise ValueError(
                f"freeze_epoch must be >= 1 (the net learns for that many epochs), got "
                f"{freeze_epoch}; to use a weighting net without learning it, freeze it from "
                "the start (meta=false with a net from another run)"
            )
        if freeze_tolerance is not None and not freeze_tolerance > 0:
            raise ValueError(f"freeze_tolerance must be > 0, got {freeze_tolerance}")
        self.meta_interval = meta_interval
        self.interval_schedule = tuple(interval_schedule)
        self.freeze_epoch = freeze_epoch
        self.freeze_tolerance = freeze_tolerance
        self.frozen_at: int | None = None
        """The epoch from which the net is frozen, once it is."""
        self.last_curve: torch.Tensor | None = None
        """The curve at the start of the previous epoch (tolerance rule)."""
        self.moved: float | None = None
        """How far the curve moved during the last epoch (tolerance rule), for the record."""

    @property
    def active(self) -> bool:
        """Whether any rule can change anything from epoch to epoch."""
        return bool(self.interval_schedule) or self.freezes

    @property
    def freezes(self) -> bool:
        return self.freeze_epoch is not None or self.freeze_tolerance is not None

    def interval(self, epoch: int) -> int:
        """The meta interval of epoch ``epoch`` (from 0)."""
        k = self.meta_interval
        for start, interval in self.interval_schedule:
            if epoch >= start:
                k = interval
        return k

    def freeze_now(self, epoch: int, curve: torch.Tensor | None) -> bool:
        """At the start of epoch ``epoch``: whether the net is frozen from this epoch on
        (it stays frozen); ``curve`` is the net's current curve on :data:`CURVE_LOSSES`
        (needed by the tolerance rule only)."""
        if self.frozen_at is not None:
            return True
        settled = False
        if self.freeze_tolerance is not None and curve is not None:
            curve = curve.detach().to("cpu", torch.float64)
            if self.last_curve is not None and self.last_curve.shape == curve.shape:
                self.moved = float((curve - self.last_curve).abs().max())
                settled = self.moved < self.freeze_tolerance
            self.last_curve = curve
        if settled or (self.freeze_epoch is not None and epoch >= self.freeze_epoch):
            self.frozen_at = epoch
        return self.frozen_at is not None

    def state_dict(self) -> dict[str, Any]:
        return {"frozen_at": self.frozen_at, "last_curve": self.last_curve, "moved": self.moved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen_at = state.get("frozen_at")
        self.last_curve = state.get("last_curve")
        self.moved = state.get("moved")
