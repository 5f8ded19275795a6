"""The hypergradient mode of the weighting methods as a small object with its own options.

``method.mwnet.hypergrad`` names a mode, and three other keys belong to one mode each
(``low_memory`` to fast, ``head`` to head, ``partial`` to partial). :func:`hypergradient`
checks that combination once and returns the mode with its options; everything else asks
the object (can it be compiled? can it run under SyncBatchNorm?) instead of comparing names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Hypergradient:
    """A configured hypergradient mode (see :mod:`mwnet.core.hypergrad`)."""

    name: ClassVar[str]
    compiles: ClassVar[bool] = False
    """torch.compile can run its passes (no double backward, no forward hooks)."""
    sync_bn: ClassVar[bool] = False
    """It runs under torch's SyncBatchNorm (no forward-mode or second-order derivative
    through BatchNorm)."""

    def reweighter_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`mwnet.MetaReweighter` that select it."""
        return {"hypergrad": self.name}


@dataclass(frozen=True)
class Fast(Hypergradient):
    """Forward mode (exact); ``low_memory`` frees the training graph before the meta pass
    and runs the forward again for the real update."""

    low_memory: bool = False
    name: ClassVar[str] = "fast"
    compiles: ClassVar[bool] = True

    def reweighter_options(self) -> dict[str, Any]:
        return {"hypergrad": self.name, "low_memory": self.low_memory}


@dataclass(frozen=True)
class Reverse(Hypergradient):
    """Second-order backward through the virtual step (exact, the authors')."""

    name: ClassVar[str] = "reverse"


@dataclass(frozen=True)
class Head(Hypergradient):
    """Only the final linear layer takes the virtual step; ``layer`` names it (None:
    detected)."""

    layer: str | None = None
    name: ClassVar[str] = "head"
    sync_bn: ClassVar[bool] = True

    def reweighter_options(self) -> dict[str, Any]:
        return {"hypergrad": self.name, "head": self.layer}


@dataclass(frozen=True)
class Partial(Hypergradient):
    """A top part of the model takes the virtual step; ``top`` is a comma list of module
    or parameter names (None: the last stage and the classifier)."""

    top: str | None = None
    name: ClassVar[str] = "partial"

    def reweighter_options(self) -> dict[str, Any]:
        return {"hypergrad": self.name, "partial": self.top}


MODES: dict[str, type[Hypergradient]] = {m.name: m for m in (Fast, Reverse, Head, Partial)}


def hypergradient(
    mode: str,
    *,
    low_memory: bool = False,
    head: str | None = None,
    partial: str | None = None,
    prefix: str = "",
) -> Hypergradient:
    """The mode ``mode`` with the options that belong to it; an option of another mode is
    an error (``prefix`` is put before the option names in the message, e.g.
    ``method.mwnet.``).

    Raises:
        ValueError: an unknown mode, or an option the mode does not read.
    """
    if mode not in MODES:
        raise ValueError(
            f"{prefix}hypergrad={mode!r} is not valid; choose one of {', '.join(MODES)}"
        )
    if low_memory and mode != "fast":
        raise ValueError(
            f"{prefix}low_memory=true needs {prefix}hypergrad=fast (reverse must keep the "
            "training graph, head keeps only one already, partial keeps the bottom's "
            "activations)"
        )
    if head is not None and mode != "head":
        raise ValueError(
            f"{prefix}head names the layer of hypergrad=head; set {prefix}hypergrad=head or "
            f"drop {prefix}head"
        )
    if partial is not None and mode != "partial":
        raise ValueError(
            f"{prefix}partial names the top of hypergrad=partial; set {prefix}hypergrad=partial "
            f"or drop {prefix}partial"
        )
    if mode == "fast":
        return Fast(low_memory=bool(low_memory))
    if mode == "head":
        return Head(head)
    if mode == "partial":
        return Partial(partial)
    return Reverse()
