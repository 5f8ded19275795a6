"""The margin rule: the default candidate is kept unless another beats it on validation
accuracy by more than the split's sampling error, and the report says by how much.

The threshold is computed here from the textbook formula for the standard error of the
difference of two proportions measured on the same n samples, not from the suite's code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mwnet.suite.grid import FULL, candidates, methods_of, setting_named
from mwnet.suite.report import Results, grid_table
from mwnet.suite.selection import Planner, choose, pick

FLIP = setting_named("flip2-40")
N = 1000


def _se(p1: float, p2: float, n: int = N) -> float:
    """Standard error (points) of p2 - p1 for accuracies in % on the same n-image split."""
    a, b = p1 / 100, p2 / 100
    return 100 * math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


def _grid(out: Path, vals: list[float]) -> None:
    """CE's seed-0 grid in flip2-40 with the given validation accuracies, in search order."""
    planner = Planner(out, FULL, [FLIP], ("ce",))
    spec = methods_of(FLIP, ("ce",))[0]
    for candidate, val in zip(candidates(FLIP, spec, FULL), vals, strict=True):
        run_dir = planner.dir(planner.cell(FLIP, spec, 0, candidate))
        run_dir.mkdir(parents=True)
        summary = {
            "finished": True,
            "last_val_acc": val,
            "val_majority_acc": 11.0,
            "val_samples": N,
            "last_test_acc": 70.0,
            "best_test_acc": 70.0,
            "wall_time": 1.0,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
        (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 70.0}) + "\n")
        (run_dir / "accuracy.png").write_bytes(b"png")


def _chosen(out: Path) -> str:
    sel = Planner(out, FULL, [FLIP], ("ce",)).selection(FLIP, methods_of(FLIP, ("ce",))[0])
    assert sel.complete and sel.chosen is not None
    return sel.chosen.tag


def test_a_near_tie_keeps_the_default(tmp_path) -> None:
    # 4 samples of 1,000 apart: the highest value is lr 0.01, the noise says nothing
    _grid(tmp_path, [80.0, 80.4])
    assert _chosen(tmp_path) == "lr0.05"


def test_a_win_just_under_the_sampling_error_keeps_the_default(tmp_path) -> None:
    assert _se(80.0, 81.7) > 1.7
    _grid(tmp_path, [80.0, 81.7])
    assert _chosen(tmp_path) == "lr0.05"


def test_a_clear_win_switches(tmp_path) -> None:
    assert _se(80.0, 82.0) < 2.0
    _grid(tmp_path, [80.0, 82.0])
    assert _chosen(tmp_path) == "lr0.01"


def test_the_threshold_is_the_standard_error_of_the_difference() -> None:
    margin = choose([80.0, 75.0, 82.0], N)
    assert (margin.default, margin.best) == (0, 2)
    assert margin.margin == pytest.approx(2.0)
    assert margin.threshold == pytest.approx(_se(80.0, 82.0))
    assert margin.chosen == 2
    # a diverged default (None): the first candidate that ran is the default
    assert choose([None, 80.0, 80.5], N).default == 1
    assert pick([None, 80.0, 80.5], N) == 1
    # an unknown split size: no threshold, the highest value wins, a tie keeps the first
    assert pick([80.0, 80.1]) == 1
    assert pick([80.0, 80.0]) == 0
    assert pick([None, None], N) is None


def test_the_report_states_each_selections_margin_and_threshold(tmp_path) -> None:
    near, clear = tmp_path / "near", tmp_path / "clear"
    _grid(near, [80.0, 80.4])
    _grid(clear, [80.0, 82.0])
    near_row = next(
        line for line in grid_table(Results(near, FULL), FLIP).splitlines() if "| CE |" in line
    )
    assert near_row.endswith(f"| +0.4 <= {_se(80.0, 80.4):.1f}: keeps lr0.05 |")
    assert "lr0.05: **80.0**" in near_row
    clear_row = next(
        line for line in grid_table(Results(clear, FULL), FLIP).splitlines() if "| CE |" in line
    )
    assert clear_row.endswith(f"| +2.0 > {_se(80.0, 82.0):.1f}: lr0.01 wins |")
    assert "lr0.01: **82.0**" in clear_row
