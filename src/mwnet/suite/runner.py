"""Run the suite's cells in parallel worker processes, resuming whatever is unfinished.

Each cell is a normal run directory, ``OUT/<setting>/<run name>``, written by the
training loop (atomic per-epoch checkpoints). Running the suite again skips finished
cells and resumes interrupted ones after their last saved epoch, so Ctrl-C or a crash
costs at most one epoch per worker. A directory that holds a run of a *different*
configuration is an error, never silently mixed into the results. A run that stops on a
non-finite loss (a learning rate too large for the method) would stop again if resumed:
it is marked failed beside its directory and never selected.

With a ledger (:mod:`mwnet.suite.ledger`), every cell that ends, finished or failed, also
leaves its record there: config, summary, metrics, machine, versions, wall and CPU time.

:func:`run_plan` keeps the workers busy while the plan unfolds: whenever a run ends, the
plan is recomputed from the run directories (a finished grid selects its candidate, which
makes the other seeds' runs ready) and new runs start.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwnet.suite.grid import Cell
from mwnet.suite.selection import Planner, failed_file, run_dir_of, write_failure

__all__ = ["SUITE_FILE", "CellResult", "run_cell", "run_cells", "run_dir_of", "run_plan"]

SUITE_FILE = "suite.json"


@dataclass(frozen=True)
class CellResult:
    label: str
    run_dir: str
    status: str
    """"done" (already finished), "trained" (finished now), "resumed" or "failed"."""
    best_test_acc: float | None
    last_test_acc: float | None
    wall_time: float
    last_val_acc: float | None = None


def _cell_config(cell: Cell, out: Path) -> Any:
    from mwnet.train.config import load_config

    return load_config(
        None,
        [*cell.overrides, f"out_dir={out / cell.setting.name}", f"name={cell.run_name}"],
    )


def ensure_label_issues(run_dir: Path) -> None:
    """``mwnet issues`` on a finished run, once: the flags a retraining excludes (made
    again when the run has trained on since they were made)."""
    from mwnet.data.label_edits import ISSUES_FILE, stale_report
    from mwnet.label_issues.command import write_report

    issues = run_dir / ISSUES_FILE
    if not issues.is_file() or stale_report(issues) is not None:
        write_report(run_dir, run_dir, montage=0)


def run_cell(cell: Cell, out: Path, ledger: Path | None = None) -> CellResult:
    """Train one cell to the end of its schedule, or skip it when it is already done; then
    write its record into ``ledger`` (when given)."""
    from mwnet.core.checks import NonFiniteError
    from mwnet.train import loop

    start, cpu_start = time.perf_counter(), time.process_time()
    if cell.method.stage == "retrain":
        exclude = next(o for o in cell.overrides if o.startswith("data.exclude="))
        ensure_label_issues(Path(exclude.split("=", 1)[1]))
    run_dir = run_dir_of(out, cell)
    if ledger is not None and failed_file(run_dir).is_file():  # it would stop again
        record_cell(cell, out, ledger, None, None)
        return CellResult(cell.label, str(run_dir), "failed", None, None, 0.0)
    try:
        summary, run_dir, status = loop.train_to_end(_cell_config(cell, out))
    except NonFiniteError as err:
        write_failure(run_dir, str(err))
        if ledger is not None:
            times = (time.perf_counter() - start, time.process_time() - cpu_start)
            record_cell(cell, out, ledger, *times)
        return CellResult(cell.label, str(run_dir), "failed", None, None, 0.0)
    if ledger is not None:
        # a run finished before this call: its training was not timed here
        measured = status != "done"
        wall = time.perf_counter() - start if measured else None
        record_cell(cell, out, ledger, wall, time.process_time() - cpu_start if measured else None)
    return CellResult(
        cell.label,
        str(run_dir),
        status,
        summary["best_test_acc"],
        summary["last_test_acc"],
        0.0 if status == "done" else time.perf_counter() - start,
        summary.get("last_val_acc"),
    )


def record_cell(cell: Cell, out: Path, ledger: Path, wall: float | None, cpu: float | None) -> Path:
    """Write the ledger record of a cell whose run directory has ended (finished or failed)."""
    from mwnet.suite.ledger import Ledger, cell_config, make_record
    from mwnet.suite.results import read_run_dir

    result = read_run_dir(run_dir_of(out, cell))
    if result is None:
        raise FileNotFoundError(f"{run_dir_of(out, cell)}: no finished or failed run to record")
    record = make_record(cell, cell_config(cell, out), result, wall, cpu)
    return Ledger(ledger).write(cell, record)


def _run_cell_quietly(args: tuple[Cell, Path, Path | None]) -> CellResult:
    """Worker entry point: epoch log lines would interleave across workers, so drop them."""
    import io
    import os

    cell, out, ledger = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    saved, sys.stderr = sys.stderr, io.StringIO()
    try:
        return run_cell(cell, out, ledger)
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
    work = [(cell, out, None) for cell in cells]
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


def run_plan(
    planner: Planner,
    jobs: int = 1,
    report: Callable[[int, int, CellResult], None] | None = None,
) -> list[CellResult]:
    """Run the plan to its end, ``jobs`` runs at a time (1: in this process), starting
    each run as soon as what it depends on has finished; with the planner's ledger, each
    ended run leaves its record there."""
    out = planner.out
    ledger = None if planner.ledger is None else planner.ledger.root
    out.mkdir(parents=True, exist_ok=True)
    results: list[CellResult] = []
    ended: set[str] = set()
    """Cells that ended in this invocation: one the plan offers again is not rerun (a
    record it cannot match would otherwise be offered forever)."""

    def done(result: CellResult) -> None:
        results.append(result)
        ended.add(result.label)
        if report:
            report(len(ended), planner.total(), result)

    warned: set[str] = set()

    def offered() -> list[Cell]:
        cells = planner.ready()
        again = [c.label for c in cells if c.label in ended and c.label not in warned]
        warned.update(again)
        if again:
            print(
                f"mwnet suite: {len(again)} cell(s) ended but are not recorded as finished "
                f"(first: {again[0]}); not run again: check their ledger records",
                file=sys.stderr,
            )
        return [c for c in cells if c.label not in ended]

    if jobs <= 1:
        while ready := offered():
            done(run_cell(ready[0], out, ledger))
        return results
    context = multiprocessing.get_context("spawn")
    running: dict[Future, str] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=8) as pool:
        while True:
            busy = set(running.values())
            for cell in offered():
                if len(running) >= jobs:
                    break
                if cell.label not in busy:
                    running[pool.submit(_run_cell_quietly, (cell, out, ledger))] = cell.label
                    busy.add(cell.label)
            if not running:
                return results
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                del running[future]
                done(future.result())
