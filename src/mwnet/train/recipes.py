"""Named sets of overrides for what a run may spend: ``--recipe exact`` (the paper's
method, the default) or ``--recipe cheap``.

``cheap`` is chosen by measurement, not by taste (docs/PERFORMANCE.md, "Accuracy against
cost"): among the modes and update schedules tried on the suite's three noisy settings
(3 seeds each), the ``head`` hypergradient kept the most accuracy for its cost. It is
within 0.5 points of the exact step under uniform and flip2 noise and 4.5 points behind
it under pair noise, at 1.36x a plain ResNet-32 step (exact: 3.71x). Sparser updates,
larger weighting-net steps and freezing the weighting net all cost more accuracy than
they save. A recipe is only overrides: the run's ``config.yaml`` records what it set, and
keys given on the command line win over it.
"""

from __future__ import annotations

RECIPES: dict[str, tuple[str, ...]] = {
    "exact": (),
    "cheap": ("method.mwnet.hypergrad=head",),
}


def recipe_overrides(name: str, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The recipe's overrides followed by ``overrides`` (later keys win)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return [*RECIPES[name], *overrides]
