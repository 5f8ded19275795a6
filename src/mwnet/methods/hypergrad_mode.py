"""The hypergradient mode of the weighting methods as a small object with its own options.

``method.mwnet.hypergrad`` names a mode, and the other keys belong to one mode each
(``low_memory`` to fast, ``head`` to head, ``partial`` to partial, ``famus_layers``,
``famus_sampling`` and ``famus_rescale`` to famus). :func:`hypergradient` checks that
combination once and returns the mode with its options; everything else asks the object
(can it be compiled? can it run under SyncBatchNorm?) instead of comparing names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mwnet.core.famus import DEFAULT_LAYERS, SAMPLINGS, LayerSampling, Sampling


@dataclass(frozen=True)
class Hypergradient:
    """A configured hypergradient mode (see :mod:`mwnet.core.hypergrad`)."""

    name: ClassVar[str]
    compiles: ClassVar[bool] = False
    """torch.compile can run its passes (no double backward, no forward hooks)."""
    sync_bn: ClassVar[bool] = False
    """It runs under torch's SyncBatchNorm (no forward-mode or second-order derivative
    through BatchNorm)."""

    def reweighter_options(self, seed: int = 0) -> dict[str, Any]:
        """The keyword arguments of :class:`mwnet.MetaReweighter` that select it (``seed``:
        the run's, for a mode that draws random numbers of its own)."""
        return {"hypergrad": self.name}


@dataclass(frozen=True)
class Fast(Hypergradient):
    """Forward mode (exact); ``low_memory`` frees the training graph before the meta pass
    and runs the forward again for the real update."""

    low_memory: bool = False
    name: ClassVar[str] = "fast"
    compiles: ClassVar[bool] = True

    def reweighter_options(self, seed: int = 0) -> dict[str, Any]:
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

    def reweighter_options(self, seed: int = 0) -> dict[str, Any]:
        return {"hypergrad": self.name, "head": self.layer}


@dataclass(frozen=True)
class Partial(Hypergradient):
    """A top part of the model takes the virtual step; ``top`` is a comma list of module
    or parameter names (None: the last stage and the classifier)."""

    top: str | None = None
    name: ClassVar[str] = "partial"

    def reweighter_options(self, seed: int = 0) -> dict[str, Any]:
        return {"hypergrad": self.name, "partial": self.top}


@dataclass(frozen=True)
class Famus(Hypergradient):
    """FaMUS's layer-wise approximation (Xu et al., CVPR 2021): the whole virtual step, the
    meta gradient through ``layers`` layers only, drawn ``uniform``-ly each step from the
    run's seed and the step, or the ``top`` ones; ``rescale`` (uniform only) makes the
    estimate unbiased. See :mod:`mwnet.core.famus` (the learned gradient sampler is not
    implemented)."""

    layers: int = DEFAULT_LAYERS
    sampling: Sampling = "uniform"
    rescale: bool = False
    name: ClassVar[str] = "famus"

    def __post_init__(self) -> None:
        self.sampling_for(0)  # checks the values once

    def sampling_for(self, seed: int) -> LayerSampling:
        """The core's description of the draws, for the run's ``seed``."""
        return LayerSampling(self.layers, self.sampling, self.rescale, int(seed))

    def reweighter_options(self, seed: int = 0) -> dict[str, Any]:
        return {"hypergrad": self.name, "famus": self.sampling_for(seed)}


MODES: dict[str, type[Hypergradient]] = {m.name: m for m in (Fast, Reverse, Head, Partial, Famus)}


def hypergradient(
    mode: str,
    *,
    low_memory: bool = False,
    head: str | None = None,
    partial: str | None = None,
    famus_layers: int | None = None,
    famus_sampling: str | None = None,
    famus_rescale: bool | None = None,
    prefix: str = "",
) -> Hypergradient:
    """The mode ``mode`` with the options that belong to it; an option of another mode is
    an error (``prefix`` is put before the option names in the message, e.g.
    ``method.mwnet.``).

    The famus options are None when not set (then famus takes its defaults).

    Raises:
        ValueError: an unknown mode, an option the mode does not read, or a bad famus
            option (the message names its key).
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
    famus = {"famus_layers": famus_layers, "famus_sampling": famus_sampling}
    famus["famus_rescale"] = famus_rescale
    given = [k for k, v in famus.items() if v is not None]
    if given and mode != "famus":
        raise ValueError(
            f"{prefix}{given[0]} is an option of hypergrad=famus; set {prefix}hypergrad=famus "
            f"or drop {prefix}{given[0]}"
        )
    if mode == "famus":
        layers = DEFAULT_LAYERS if famus_layers is None else famus_layers
        sampling = "uniform" if famus_sampling is None else famus_sampling
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"{prefix}famus_layers must be an integer >= 1, got {layers!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(
                f"{prefix}famus_sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}"
            )
        if famus_rescale and sampling != "uniform":
            raise ValueError(
                f"{prefix}famus_rescale=true scales a random draw to be unbiased, and "
                f"{prefix}famus_sampling={sampling} draws nothing; use famus_sampling=uniform "
                "or drop famus_rescale"
            )
        return Famus(layers, sampling, bool(famus_rescale))  # type: ignore[arg-type]
    if mode == "fast":
        return Fast(low_memory=bool(low_memory))
    if mode == "head":
        return Head(head)
    if mode == "partial":
        return Partial(partial)
    return Reverse()
