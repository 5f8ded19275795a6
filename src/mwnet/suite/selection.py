"""Model selection without the test set, and the suite's plan of runs that follows from it.

The protocol, for every setting and method:

1. Every candidate of the method's grid (:func:`mwnet.suite.grid.candidates`: the learning
   rates, times the values of its one main hyperparameter) trains on the setting's first
   seed.
2. The candidate with the highest **last-epoch validation accuracy** is selected (the
   validation split is held out of the noisy training data; its labels are as noisy as
   the training labels). A tie, to the split's resolution of one sample, keeps the
   candidate that comes first in the grid: the larger learning rate, then the method's
   default value of the knob. A diverged run is never selected: one that stopped on a
   non-finite loss, or (at a scale with :attr:`~mwnet.suite.grid.Scale.chance_rule`) one
   whose last-epoch validation accuracy is no better than always answering the split's
   most common label plus one sample (``val_majority_acc``: a model collapsed to one
   class, finite but at chance). A method whose every candidate diverged has no selection
   and no numbers.
3. The selected candidate trains on the remaining seeds. The report's numbers are those
   runs and the first seed's selected run: the test set is read for nothing else.

A method that continues another (``after``: retraining without the flagged labels,
fine-tuning the model) continues that method's *selected* run of the same seed, and its
own grid is searched the same way.

Everything here reads run directories, so the plan can be recomputed at any time: after an
interruption, the suite plans again from what is on disk and runs what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mwnet.run.records import read_json
from mwnet.suite.grid import (
    SECONDS_PER_COST,
    Candidate,
    Cell,
    MethodSpec,
    Scale,
    Setting,
    candidates,
    cell_overrides,
    method_named,
    methods_of,
    seeds_of,
    setting_named,
)

FAILED_SUFFIX = ".failed.json"
"""Beside a run directory whose run stopped on an error it would repeat on resume."""


def run_dir_of(out: Path, cell: Cell) -> Path:
    return out / cell.setting.name / cell.run_name


def failed_file(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + FAILED_SUFFIX)


@dataclass(frozen=True)
class State:
    """What is on disk for a cell: finished (with its last-epoch validation accuracy),
    failed (a non-finite loss), or neither (to run)."""

    finished: bool
    failed: bool
    val_acc: float | None
    at_chance: bool = False
    """Finished, but no better on the validation split than a constant answer."""

    @property
    def settled(self) -> bool:
        return self.finished or self.failed

    @property
    def diverged(self) -> bool:
        return self.failed or self.at_chance

    @property
    def selectable(self) -> bool:
        return self.finished and not self.at_chance and self.val_acc is not None


def at_chance(summary: dict, chance_rule: bool = True) -> bool:
    """The run's last-epoch validation accuracy is at most the constant answer's
    (``val_majority_acc``) plus one validation sample: what a collapsed model scores."""
    val, majority = summary.get("last_val_acc"), summary.get("val_majority_acc")
    samples = summary.get("val_samples") or 0
    if not chance_rule or val is None or majority is None or samples < 1:
        return False
    return float(val) <= float(majority) + 100.0 / samples


def state_of(run_dir: Path, chance_rule: bool = True) -> State:
    if failed_file(run_dir).is_file():
        return State(False, True, None)
    summary = run_dir / "summary.json"
    if not summary.is_file() or not (run_dir / "accuracy.png").is_file():
        return State(False, False, None)
    data = read_json(summary)
    if not data.get("finished"):
        return State(False, False, None)
    return State(True, False, data.get("last_val_acc"), at_chance(data, chance_rule))


def pick(vals: Sequence[float | None]) -> int | None:
    """The selected position: highest value, the first of equals, None entries never
    (None when every entry is None)."""
    best = None
    for k, v in enumerate(vals):
        if v is not None and (best is None or v > vals[best]):
            best = k
    return best


@dataclass(frozen=True)
class Selection:
    """A method's grid on the first seed and the candidate chosen from it."""

    setting: Setting
    method: MethodSpec
    grid: list[tuple[Candidate, State]]
    chosen: Candidate | None
    """None while the grid is unfinished, or when every candidate failed."""
    complete: bool
    searched: bool = True
    """False where nothing was searched here: a fixed setting, or one that takes another
    setting's selection (``Setting.select_from``)."""


class Planner:
    """The suite's runs for a scale, settings and methods, given what is on disk."""

    def __init__(
        self, out: Path, scale: Scale, settings: Sequence[Setting], methods: tuple[str, ...]
    ) -> None:
        self.out, self.scale = out, scale
        self.settings = list(settings)
        wanted = set(methods)
        for name in methods:  # a continuation needs the run it continues
            after = method_named(name).after
            while after is not None:
                wanted.add(after)
                after = method_named(after).after
        self.methods = tuple(wanted)

    def cell(
        self, setting: Setting, method: MethodSpec, seed: int, candidate: Candidate
    ) -> Cell | None:
        """The run, or None while the run it continues is not selected or not finished."""
        source = None
        if method.after is not None:
            source_cell = self.selected_cell(setting, method_named(method.after), seed)
            if source_cell is None:
                return None
            source_dir = run_dir_of(self.out, source_cell)
            if not state_of(source_dir).finished:
                return None
            source = str(source_dir)
        overrides = cell_overrides(self.scale, setting, method, seed, candidate, source)
        return Cell(setting, method, seed, overrides, candidate.tag)

    def selection(self, setting: Setting, method: MethodSpec) -> Selection:
        if setting.fixed:
            (only,) = candidates(setting, method, self.scale)
            return Selection(setting, method, [], only, True, searched=False)
        if setting.select_from is not None:
            other = self.selection(setting_named(setting.select_from), method)
            return Selection(setting, method, [], other.chosen, other.complete, searched=False)
        first = seeds_of(setting, self.scale)[0]
        grid = []
        complete = True
        for candidate in candidates(setting, method, self.scale):
            cell = self.cell(setting, method, first, candidate)
            state = State(False, False, None) if cell is None else self.state(cell)
            complete = complete and state.settled
            grid.append((candidate, state))
        chosen = None
        if complete:
            k = pick([s.val_acc if s.selectable else None for _, s in grid])
            chosen = None if k is None else grid[k][0]
        return Selection(setting, method, grid, chosen, complete)

    def selected_cell(self, setting: Setting, method: MethodSpec, seed: int) -> Cell | None:
        chosen = self.selection(setting, method).chosen
        return None if chosen is None else self.cell(setting, method, seed, chosen)

    def dir(self, cell: Cell) -> Path:
        return run_dir_of(self.out, cell)

    def state(self, cell: Cell) -> State:
        return state_of(self.dir(cell), self.scale.chance_rule)

    def ready(self) -> list[Cell]:
        """Every run that can start now and has not settled, in the order to start them:
        the first seed's grids first (they decide everything else), slowest first; then
        seed by seed, slowest first within a seed, so that a suite stopped early leaves
        whole seeds to compare (every method on the same data)."""
        first, rest = [], []
        for setting in self._with_sources():
            seeds = seeds_of(setting, self.scale)
            searched = not setting.fixed and setting.select_from is None
            if setting not in self.settings:  # only its selections are needed
                seeds = seeds[:1]
            for method in methods_of(setting, self.methods):
                if not searched:
                    for seed in seeds:
                        cell = self.selected_cell(setting, method, seed)
                        if cell is not None and not state_of(self.dir(cell)).settled:
                            rest.append(cell)
                    continue
                for candidate in candidates(setting, method, self.scale):
                    cell = self.cell(setting, method, seeds[0], candidate)
                    if cell is not None and not state_of(self.dir(cell)).settled:
                        first.append(cell)
                for seed in seeds[1:]:
                    cell = self.selected_cell(setting, method, seed)
                    if cell is not None and not state_of(self.dir(cell)).settled:
                        rest.append(cell)
        by_cost = lambda c: -c.method.cost  # noqa: E731
        by_seed = lambda c: (c.seed, -c.method.cost)  # noqa: E731
        return sorted(first, key=by_cost) + sorted(rest, key=by_seed)

    def _with_sources(self) -> list[Setting]:
        """The settings asked for, and before them those whose selections they take."""
        extra = []
        for setting in self.settings:
            name = setting.select_from
            if name is not None and all(s.name != name for s in (*self.settings, *extra)):
                extra.append(setting_named(name))
        return [*extra, *self.settings]

    def counts(self) -> list[tuple[Setting, MethodSpec, int]]:
        """Runs per setting and method once every selection is made: the first seed's
        grid (one candidate where nothing is searched) and the selection on the other
        seeds; a setting only needed for its selections runs its grid alone."""
        out = []
        for setting in self._with_sources():
            seeds = seeds_of(setting, self.scale)
            searched = not setting.fixed and setting.select_from is None
            for method in methods_of(setting, self.methods):
                if not searched:
                    n = len(seeds)
                else:
                    n = len(candidates(setting, method, self.scale))
                    if setting in self.settings:
                        n += len(seeds) - 1
                out.append((setting, method, n))
        return out

    def total(self) -> int:
        """Runs the plan holds once every selection is made."""
        return sum(n for _, _, n in self.counts())

    def estimated_core_hours(self) -> float:
        """One thread's hours for the whole plan at the full scale, from each method's
        relative cost and each setting's size (:data:`~mwnet.suite.grid.SECONDS_PER_COST`);
        the quick scale's runs take seconds whatever this says."""
        units = sum(n * m.cost * s.cost_factor for s, m, n in self.counts())
        return units * SECONDS_PER_COST / 3600


def write_failure(run_dir: Path, message: str) -> None:
    """Mark a run that stopped on an error it would repeat (a non-finite loss)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    failed_file(run_dir).write_text(json.dumps({"error": message}) + "\n")
