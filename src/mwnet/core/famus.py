"""The ``famus`` hypergradient: the meta gradient accumulated from a few layers only.

FaMUS (Xu, Zhu, Jiang, Yang, "Faster Meta Update Strategy for Noise-Robust Deep
Learning", CVPR 2021) starts from the chain rule of the exact meta gradient written layer
by layer (their Eq. 7, supplement Eq. 1-6): with θ̂ = θ − s·∇_θ Σ_i c_i(Θ) L_i(θ),

    ∂L_meta/∂Θ = Σ_l Σ_i (∂c_i/∂Θ) · ⟨∇_{θ̂_l} L_meta, −s_l ∇_{θ_l} L_i⟩,

one term per layer l (a layer's parameters move in the virtual step by their own gradient
only, so the sum over layers is exact). FaMUS keeps the terms of a few layers (their
Eq. 9: Σ_l 1[r_l = 1] · term_l) and updates the weighting net with that sum. The virtual
step itself is unchanged: θ̂ moves every layer, and the meta loss is that of the whole
virtual model; only the meta gradient's path back to the weights runs through the kept
layers. Where the kept layers are near the output, the meta backward and the
forward-mode pass that computes the inner products stop at the lowest of them, which is
where the time goes (their Fig. 1b: the meta backward is 80% of an MW-Net step).

Here the terms of the kept layers are computed the way ``fast`` computes all of them
(:func:`mwnet.core.hypergrad.fast_hypergradient`): the meta gradient at θ̂ for the kept
layers' parameters only, then one JVP of the per-sample losses at θ in the direction
−s·∇_{θ̂} L_meta restricted to those parameters (zero elsewhere, so layers below the
lowest kept one add no tangent work).

Which layers (:class:`LayerSampling`):

* ``uniform``: ``layers`` of the L layers drawn uniformly without replacement at every
  meta update, from a generator seeded by the run's seed and the step (never the global
  RNG: a resumed run and every rank of a data-parallel run draw the same layers). This is
  the paper's "Random Layers" strategy (Table 4) and "Random MW-Net" (Fig. 3-5). Each
  layer is kept with probability K/L, so the sum of the kept terms has expectation
  (K/L)·∂L_meta/∂Θ: biased towards zero by the factor K/L. ``rescale=True`` multiplies
  the sum by L/K (Horvitz-Thompson), which makes it unbiased.
* ``top``: the ``layers`` layers nearest the output, every step (the paper's
  "Pre-specified Block", Table 4, which it finds cheapest at the top block; the authors'
  code likewise only ever gates the last stage's parameters and always keeps the
  classifier's). Deterministic and biased; the cheapest choice, since the meta backward
  and the JVP stop at the top.

A *layer* is a module that holds parameters itself (a convolution, a batch norm with its
weight and bias, a linear layer with its bias), in the order the parameters are
registered; ``top`` assumes that this is the order in which they run, as the partial step
does (:mod:`mwnet.core.partial`).

Departures from the paper and the authors' code (github.com/youjiangxu/FaMUS):

* **omitted: the learned gradient sampler.** FaMUS decides r_l per layer with a small
  network Γ(·; η_l) on the layer's average-pooled training gradient (FC-PReLU-FC with a
  hard Gumbel-softmax, straight-through), trained jointly with the weighting net on the
  meta loss plus λ1·(Σ_l r_l − K)² (their Eq. 10) and λ2·‖ḡ_train_L − ḡ_val_L‖² on the last
  layer (Eq. 11). None of this is here: the layers are drawn uniformly or fixed at the top
  (the paper's two baseline strategies), and the weighting net's update is the plain
  MW-Net one on the kept layers' terms. Their ablation (Tables 3 and 4, WRN-28-10,
  CIFAR-100 with 60% noise) credits the learned sampler with the speed (284 ms a step
  against 764 ms for four random layers and 933 ms for MW-Net) and with 0.8 to 1.7 points
  over 4 to 16 random layers.
* the authors' code gates single parameter tensors (a batch norm's weight and bias
  separately); here, as in the paper's text, a layer's parameters are kept or dropped
  together.
* the authors' code also detaches the meta forward below the last stage
  (``meta_model(x, detach=True)``), so that no layer below it contributes whatever the
  gates say; here the meta forward is the whole virtual model's, and a kept lower layer
  contributes its exact term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Sampling = Literal["uniform", "top"]
SAMPLINGS: tuple[str, ...] = ("uniform", "top")
DEFAULT_LAYERS = 4
"""The paper's K, the expected number of layers that contribute (Sec. 5.1)."""


@dataclass(frozen=True)
class LayerSampling:
    """Which layers contribute to the meta gradient at each meta update (see the module
    docstring).

    Args:
        layers: K, how many layers are kept per meta update (all of them when the model
            has K or fewer: then the estimate is ``fast``'s exact hypergradient).
        sampling: ``"uniform"`` (K of the L layers at random each step) or ``"top"`` (the
            K layers nearest the output).
        rescale: ``uniform`` only: multiply the kept terms by L/K, an unbiased estimate of
            the exact hypergradient; False (the paper's Eq. 9) keeps their plain sum,
            whose expectation is K/L of it.
        seed: the run's seed; with the step index it seeds each draw.
    """

    layers: int = DEFAULT_LAYERS
    sampling: Sampling = "uniform"
    rescale: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"famus layers must be an integer >= 1, got {self.layers!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(
                f"famus sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"
            )
        if self.rescale and self.sampling != "uniform":
            raise ValueError(
                f"famus rescale=True scales a random draw to be unbiased; sampling="
                f"{self.sampling!r} draws nothing. Use sampling='uniform' or rescale=False"
            )

    def draw(self, count: int, step: int) -> tuple[list[int], float]:
        """The kept layers (positions among ``count`` layers, ascending) at ``step``, and
        the factor the kept terms are multiplied by."""
        if count < 1:
            raise ValueError("famus needs at least one layer with parameters to keep")
        k = min(self.layers, count)
        if k == count:
            return list(range(count)), 1.0
        if self.sampling == "top":
            return list(range(count - k, count)), 1.0
        rng = np.random.default_rng([int(self.seed) % 2**63, int(step), _STREAM])
        kept = sorted(int(i) for i in rng.choice(count, size=k, replace=False))
        return kept, (count / k if self.rescale else 1.0)


_STREAM = 0x46A3
"""Keeps these draws apart from other generators seeded with the same (seed, step)."""


def layer_groups(names: Sequence[str]) -> list[list[int]]:
    """Positions in ``names`` (parameter names, as ``model.named_parameters()`` gives them)
    grouped by the module that holds them, in order of first appearance: one list per
    layer."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.rpartition(".")[0], []).append(i)
    return list(groups.values())


def kept_parameters(
    sampling: LayerSampling, groups: Sequence[Sequence[int]], step: int
) -> tuple[list[int], float]:
    """Positions of the parameters whose layers are kept at ``step``, and the factor."""
    layers, scale = sampling.draw(len(groups), step)
    return sorted(i for layer in layers for i in groups[layer]), scale
