"""The suite's finished runs at their selected hyperparameters: what every table and plot
of the report reads.

:class:`Results` walks the grid once, asks the selection (:mod:`mwnet.suite.selection`)
which candidate each method keeps in each setting, and collects that candidate's finished
runs over the seeds as :class:`Run` objects, read from the run directories or from the
ledger's records alone; runs that diverged are set aside and counted, never averaged in.
Nothing here formats or draws anything, so the tables (:mod:`mwnet.suite.tables`), the
plots (:mod:`mwnet.suite.plots`) and the page (:mod:`mwnet.suite.page`) read the same view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.suite.grid import (
    METHOD_NAMES,
    SETTINGS,
    Scale,
    Setting,
    method_named,
    methods_of,
    seeds_of,
    setting_named,
)
from mwnet.suite.ledger import Ledger
from mwnet.suite.results import Result
from mwnet.suite.selection import Planner, Selection, state_from


@dataclass
class Run:
    """One finished run, as read back from its result (run directory or ledger record)."""

    setting: str
    method: str
    seed: int
    tag: str
    result: Result
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.result.metrics

    @property
    def best(self) -> float:
        return float(self.summary["best_test_acc"])

    @property
    def last(self) -> float:
        return float(self.summary["last_test_acc"])

    @property
    def val(self) -> float | None:
        return self.summary.get("last_val_acc")

    @property
    def auroc(self) -> float | None:
        """AUROC of a low final weight as a detector of a corrupted label."""
        if not self.method.startswith(("mwnet", "cmwnet", "l2rw")):
            return None
        return self.result.derived.get("weight_auroc")

    @property
    def issues_auroc(self) -> float | None:
        """AUROC of ``mwnet issues``' label-quality score (low = wrong) for corrupted
        labels, from what the run recorded."""
        return self.result.derived.get("issues_auroc")

    @property
    def weight_function(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The learned weighting function: losses, and weights (one column per cluster)."""
        wf = self.result.derived.get("weight_function")
        if wf is None:
            return None
        return np.asarray(wf["losses"], dtype=np.float64), np.asarray(
            wf["weights"], dtype=np.float64
        )

    @property
    def loss_percentiles(self) -> tuple[float, float] | None:
        """The 1st and 99th percentile of the final training losses."""
        found = self.result.derived.get("loss_percentiles")
        return None if found is None else (float(found[0]), float(found[1]))


class Results:
    """The suite's finished runs and its selections, as the report reads them: from the
    run directories under ``out``, or (``ledger``) from the ledger's records alone."""

    def __init__(self, out: Path, scale: Scale, ledger: Path | None = None) -> None:
        self.out, self.scale = out, scale
        self.ledger = ledger
        self.planner = Planner(
            out, scale, list(SETTINGS), METHOD_NAMES, None if ledger is None else Ledger(ledger)
        )
        self._selections: dict[tuple[str, str], Selection] = {}
        self.runs: list[Run] = []
        self.diverged: dict[tuple[str, str], list[int]] = {}
        """Seeds whose run at the selected values diverged (left out of every number)."""
        for setting in SETTINGS:
            for method in methods_of(setting, METHOD_NAMES):
                sel = self.selection(setting.name, method.name)
                if sel.chosen is None:
                    continue
                for seed in seeds_of(setting, scale):
                    cell = self.planner.cell(setting, method, seed, sel.chosen)
                    if cell is None:
                        continue
                    result = self.planner.result(cell)
                    if state_from(result, scale.chance_rule).diverged:
                        self.diverged.setdefault((setting.name, method.name), []).append(seed)
                        continue
                    if result is not None and result.finished:
                        run = Run(setting.name, method.name, seed, cell.tag, result)
                        self.runs.append(run)

    @property
    def stale(self) -> list[str]:
        """The stale ledger records the report met, described."""
        return [s.describe() for _, s in sorted(self.planner.stale.items())]

    def selection(self, setting: str, method: str) -> Selection:
        key = (setting, method)
        if key not in self._selections:
            self._selections[key] = self.planner.selection(
                setting_named(setting), method_named(method)
            )
        return self._selections[key]

    def select(self, setting: str, method: str) -> list[Run]:
        return [r for r in self.runs if r.setting == setting and r.method == method]

    def main_settings(self) -> list[Setting]:
        """The main group's settings that have a finished run."""
        return [
            s for s in SETTINGS if s.group == "main" and any(r.setting == s.name for r in self.runs)
        ]
