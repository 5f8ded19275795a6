"""Model selection without the test set, and the suite's plan of runs that follows from it.

The protocol, for every setting and method:

1. Every candidate of the method's grid (:func:`mwnet.suite.grid.candidates`: the learning
   rates, times the values of its one main hyperparameter) trains on the setting's first
   seed.
2. The first candidate of the grid is the **default** (the larger learning rate, then the
   method's default value of the knob); it is kept unless another candidate beats it on
   **last-epoch validation accuracy** by more than the split's sampling error
   (:func:`choose`, the margin rule). The validation split is held out of the noisy
   training data; its labels are as noisy as the training labels. A diverged run is never
   selected: one that stopped on a non-finite loss, or (at a scale with
   :attr:`~mwnet.suite.grid.Scale.chance_rule`) one whose last-epoch validation accuracy
   is no better than always answering the split's most common label plus one sample
   (``val_majority_acc``: a model collapsed to one class, finite but at chance); where the
   default diverged, the first candidate that did not is the default. A method whose every
   candidate diverged has no selection and no numbers.
3. The selected candidate trains on the remaining seeds. The report's numbers are those
   runs and the first seed's selected run: the test set is read for nothing else.

A method that continues another (``after``: retraining without the flagged labels,
fine-tuning the model) continues that method's *selected* run of the same seed, and its
own grid is searched the same way.

Everything here reads each cell's :class:`~mwnet.suite.results.Result`, from its run
directory or from its ledger record (:mod:`mwnet.suite.ledger`), so the plan can be
recomputed at any time: after an interruption, the suite plans again from what is on disk
and runs what is missing, and the report can be written from the ledger alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
from mwnet.suite.results import FAILED_SUFFIX, Result, failed_file, read_run_dir

if TYPE_CHECKING:
    from mwnet.suite.ledger import Ledger, Stale

__all__ = [
    "FAILED_SUFFIX",
    "Margin",
    "Planner",
    "Selection",
    "State",
    "choose",
    "failed_file",
    "pick",
    "run_dir_of",
    "state_from",
    "state_of",
    "write_failure",
]


def run_dir_of(out: Path, cell: Cell) -> Path:
    return out / cell.setting.name / cell.run_name


@dataclass(frozen=True)
class State:
    """What is on disk for a cell: finished (with its last-epoch validation accuracy),
    failed (a non-finite loss), or neither (to run)."""

    finished: bool
    failed: bool
    val_acc: float | None
    at_chance: bool = False
    """Finished, but no better on the validation split than a constant answer."""
    val_samples: int = 0
    """The validation split's size (0: unknown)."""

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


def state_from(result: Result | None, chance_rule: bool = True) -> State:
    """What the selection sees of a cell's result (None: nothing yet)."""
    if result is None:
        return State(False, False, None)
    if result.failed is not None:
        return State(False, True, None)
    if not result.finished:
        return State(False, False, None)
    summary = result.summary
    return State(
        True,
        False,
        summary.get("last_val_acc"),
        at_chance(summary, chance_rule),
        result.val_samples,
    )


def state_of(run_dir: Path, chance_rule: bool = True) -> State:
    return state_from(read_run_dir(run_dir), chance_rule)


def sampling_error(acc_a: float, acc_b: float, samples: int) -> float:
    """The standard error, in points, of the difference of two accuracies (in %) measured
    on the same ``samples``-image split: sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n); 0 where
    the size is unknown."""
    if samples < 1:
        return 0.0
    p, q = acc_a / 100.0, acc_b / 100.0
    variance = (max(p * (1 - p), 0.0) + max(q * (1 - q), 0.0)) / samples
    return 100.0 * math.sqrt(variance)


@dataclass(frozen=True)
class Margin:
    """How a grid's selection was decided: the default, the best, and the margin rule."""

    default: int
    """Position of the default: the first candidate in grid order that can be selected."""
    best: int
    """Position of the highest validation accuracy (the first of equals)."""
    margin: float
    """The best's validation accuracy minus the default's, in points."""
    threshold: float
    """The split's sampling error of that difference, in points (:func:`sampling_error`)."""

    @property
    def switched(self) -> bool:
        return self.best != self.default and self.margin > self.threshold

    @property
    def chosen(self) -> int:
        return self.best if self.switched else self.default


def choose(vals: Sequence[float | None], samples: int = 0) -> Margin | None:
    """The margin rule. The default candidate (the first entry that is not None: grid order
    puts the larger learning rate, then the method's default knob value, first) is kept
    unless the best entry beats it by more than the sampling error of the difference of two
    accuracies on the same ``samples``-image validation split,
    sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n).

    Why: a validation split of 1,000 images measures an accuracy near 80 % to about 1.3
    points (one standard error), and two candidates 4 samples (0.4 points) apart swap places
    between two CPUs that round differently. Picking the strict maximum would make the
    selection, and every number of the methods it feeds, depend on that noise; a default
    kept within the noise gives the same selection wherever the grid runs, and a candidate
    that is really better (beyond one standard error) still wins. With ``samples`` unknown
    (0) the threshold is 0: the highest value wins, a tie keeps the default. None entries
    (diverged runs) are never chosen; None when every entry is None."""
    present = [k for k, v in enumerate(vals) if v is not None]
    if not present:
        return None
    default = present[0]
    best = default
    for k in present:
        if vals[k] > vals[best]:  # type: ignore[operator]
            best = k
    a, b = float(vals[default]), float(vals[best])  # type: ignore[arg-type]
    return Margin(default, best, b - a, sampling_error(a, b, samples))


def pick(vals: Sequence[float | None], samples: int = 0) -> int | None:
    """The selected position under the margin rule (:func:`choose`)."""
    margin = choose(vals, samples)
    return None if margin is None else margin.chosen


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
    margin: Margin | None = None
    """How the margin rule decided (a complete grid with a selectable candidate)."""


class Planner:
    """The suite's runs for a scale, settings and methods, given what is on disk.

    Without a ledger, a cell's result is its run directory's. With one, it is its ledger
    record's, and only a record whose config matches the cell counts: a cell without one
    runs (a run directory already finished there is only read, and recorded), and a stale
    record is listed in :attr:`stale` and replaced when the cell runs again."""

    def __init__(
        self,
        out: Path,
        scale: Scale,
        settings: Sequence[Setting],
        methods: tuple[str, ...],
        ledger: Ledger | None = None,
    ) -> None:
        self.out, self.scale = out, scale
        self.ledger = ledger
        self.stale: dict[Path, Stale] = {}
        """Records whose config no longer matches their cell, by path."""
        self.results: dict[str, tuple[Cell, Result]] = {}
        """Every result read so far, with its cell, by the cell's label."""
        self._configs: dict[tuple[str, ...], dict] = {}
        self._overrides: dict[tuple, tuple[str, ...]] = {}
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
            if not self.state(source_cell).finished:
                return None
            source = str(run_dir_of(self.out, source_cell))
        key = (setting.name, method.name, seed, candidate.overrides, source)
        if key not in self._overrides:  # a report asks for every cell many times
            self._overrides[key] = cell_overrides(
                self.scale, setting, method, seed, candidate, source
            )
        return Cell(setting, method, seed, self._overrides[key], candidate.tag)

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
        chosen = margin = None
        if complete:
            vals = [s.val_acc if s.selectable else None for _, s in grid]
            samples = max((s.val_samples for _, s in grid if s.selectable), default=0)
            margin = choose(vals, samples)
            chosen = None if margin is None else grid[margin.chosen][0]
        return Selection(setting, method, grid, chosen, complete, margin=margin)

    def selected_cell(self, setting: Setting, method: MethodSpec, seed: int) -> Cell | None:
        chosen = self.selection(setting, method).chosen
        return None if chosen is None else self.cell(setting, method, seed, chosen)

    def dir(self, cell: Cell) -> Path:
        return run_dir_of(self.out, cell)

    def result(self, cell: Cell) -> Result | None:
        """The cell's result: its matching ledger record, or (no ledger) its run directory."""
        if self.ledger is None:
            found = read_run_dir(self.dir(cell))
        else:
            found, stale = self.ledger.lookup(cell, lambda: self._config(cell))
            path = self.ledger.path(cell)
            if stale is not None:
                self.stale[path] = stale
            else:
                self.stale.pop(path, None)
        if found is not None:
            self.results[cell.label] = (cell, found)
        return found

    def _config(self, cell: Cell) -> dict:
        from mwnet.suite.ledger import cell_config

        if cell.overrides not in self._configs:
            self._configs[cell.overrides] = cell_config(cell, self.out)
        return self._configs[cell.overrides]

    def state(self, cell: Cell) -> State:
        return state_from(self.result(cell), self.scale.chance_rule)

    def _runnable(self, cell: Cell) -> Cell:
        """The cell, or the run it continues where that run is known from the ledger alone:
        a continuation starts from the run directory, so the source trains here first."""
        if self.ledger is None or cell.method.after is None:
            return cell
        source = self.selected_cell(cell.setting, method_named(cell.method.after), cell.seed)
        on_disk = None if source is None else read_run_dir(self.dir(source))
        if source is None or (on_disk is not None and on_disk.finished):
            return cell
        return source

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
                        if cell is not None and not self.state(cell).settled:
                            rest.append(self._runnable(cell))
                    continue
                for candidate in candidates(setting, method, self.scale):
                    cell = self.cell(setting, method, seeds[0], candidate)
                    if cell is not None and not self.state(cell).settled:
                        first.append(self._runnable(cell))
                for seed in seeds[1:]:
                    cell = self.selected_cell(setting, method, seed)
                    if cell is not None and not self.state(cell).settled:
                        rest.append(self._runnable(cell))
        by_cost = lambda c: -c.method.cost  # noqa: E731
        by_seed = lambda c: (c.seed, -c.method.cost)  # noqa: E731
        ordered = sorted(first, key=by_cost) + sorted(rest, key=by_seed)
        return list({c.label: c for c in ordered}.values())

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
