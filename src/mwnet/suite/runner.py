"""Run the suite's cells in parallel worker processes, resuming whatever is unfinished.

Each cell is a normal run directory, ``OUT/<setting>/<method>-seed<k>``, written by the
training loop (atomic per-epoch checkpoints). Running the suite again skips finished
cells and resumes interrupted ones after their last saved epoch, so Ctrl-C or a crash
costs at most one epoch per worker. A directory that holds a run of a *different*
configuration is an error, never silently mixed into the results.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwnet.suite.grid import Cell

SUITE_FILE = "suite.json"


@dataclass(frozen=True)
class CellResult:
    label: str
    run_dir: str
    status: str
    """"done" (already finished), "trained" (finished now) or "resumed"."""
    best_test_acc: float | None
    last_test_acc: float | None
    wall_time: float


def run_dir_of(out: Path, cell: Cell) -> Path:
    return out / cell.setting.name / cell.run_name


def _cell_config(cell: Cell, out: Path) -> Any:
    from mwnet.train.config import load_config

    return load_config(
        None,
        [*cell.overrides, f"out_dir={out / cell.setting.name}", f"name={cell.run_name}"],
    )


def finished(summary: dict[str, Any]) -> bool:
    """Whether a run's ``summary.json`` says it has finished: its ``finished`` flag, which
    the loop sets only after the last epoch's files and plots are written (older runs,
    without the flag: all epochs done)."""
    if "finished" in summary:
        return bool(summary["finished"])
    return summary["epochs_done"] == summary["epochs_total"]


def _finished(run_dir: Path) -> bool:
    from mwnet.run.records import read_json

    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    return finished(read_json(summary)) and (run_dir / "accuracy.png").is_file()


def run_cell(cell: Cell, out: Path) -> CellResult:
    """Train one cell to the end of its schedule, or skip it when it is already done."""
    from mwnet.run.records import read_json
    from mwnet.train import loop
    from mwnet.train.config import load_config_file, to_yaml

    cfg = _cell_config(cell, out)
    run_dir = run_dir_of(out, cell)
    saved = run_dir / loop.CONFIG
    if saved.is_file():
        if to_yaml(load_config_file(saved)) != to_yaml(cfg):
            raise FileExistsError(
                f"{run_dir} holds a run with a different configuration; delete it or choose "
                "another --out"
            )
        if _finished(run_dir):
            s = read_json(run_dir / "summary.json")
            return CellResult(
                cell.label, str(run_dir), "done", s["best_test_acc"], s["last_test_acc"], 0.0
            )
        trainer, status = loop.resume(run_dir, quiet=True), "resumed"
    else:
        trainer, _ = loop.start(cfg, quiet=True)
        status = "trained"
    start = time.perf_counter()
    summary = trainer.fit()
    if trainer.epoch == trainer.exp.total_epochs and not (run_dir / "accuracy.png").is_file():
        trainer.finish()
    return CellResult(
        cell.label,
        str(run_dir),
        status,
        summary["best_test_acc"],
        summary["last_test_acc"],
        time.perf_counter() - start,
    )


def _run_cell_quietly(args: tuple[Cell, Path]) -> CellResult:
    """Worker entry point: epoch log lines would interleave across workers, so drop them."""
    import io
    import os

    cell, out = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    saved, sys.stderr = sys.stderr, io.StringIO()
    try:
        return run_cell(cell, out)
    finally:
        sys.stderr = saved


def run_cells(
    cells: Sequence[Cell],
    out: Path,
    jobs: int = 1,
    report: Callable[[int, int, CellResult], None] | None = None,
) -> list[CellResult]:
    """Run every cell, ``jobs`` at a time in worker processes (1: in this process)."""
    out.mkdir(parents=True, exist_ok=True)
    work = [(cell, out) for cell in cells]
    results: list[CellResult] = []
    if jobs <= 1:
        for i, item in enumerate(work, start=1):
            results.append(run_cell(*item))
            if report:
                report(i, len(work), results[-1])
        return results
    # spawn, not fork: forked workers would inherit this process's torch thread pools.
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, maxtasksperchild=8) as pool:
        for i, result in enumerate(pool.imap_unordered(_run_cell_quietly, work), start=1):
            results.append(result)
            if report:
                report(i, len(work), result)
    return results
