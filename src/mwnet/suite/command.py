"""``mwnet suite``: run (or resume) the Fashion-MNIST suite, then write its report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from mwnet.argtypes import comma_list
from mwnet.suite.grid import (
    DEFAULT_METHODS,
    DEFAULT_SETTINGS,
    FULL,
    QUICK,
    SETTING_NAMES,
    SETTINGS,
    suite_methods,
)

EXTRA_SETTINGS = tuple(n for n in SETTING_NAMES if n not in DEFAULT_SETTINGS)
"""Settings run only when named: milder variants, 300 clean images, the full training set."""
FULL_TRAIN = tuple(s.name for s in SETTINGS if s.group == "full-train")
REGIME = tuple(s.name for s in SETTINGS if s.group == "regime")


def add_suite(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "suite",
        help="run the Fashion-MNIST evidence suite (methods x settings x seeds) and report",
        description="Train every method on every setting: each method's learning rate and "
        "main hyperparameter chosen on the first seed by accuracy on a validation split of "
        "the noisy training data, then the chosen values on the other seeds (each run an "
        "ordinary run directory under --out, and a small record in the --ledger). Cells "
        "recorded in the ledger are skipped, interrupted runs resumed. Then write "
        "RESULTS.md and plots to --docs from the ledger. The default grid takes "
        "about 3 hours on a 2-core CPU; --quick is a tiny version for smoke tests; "
        f"--settings {','.join(FULL_TRAIN)} is the full-training-set regime (hours more); "
        f"--settings {','.join(REGIME)} the cheap MW-Net modes on the small CNN (about 1 h).",
    )
    p.add_argument("--quick", action="store_true", help="tiny cells: 2 epochs, tiny grids")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs in parallel, one CPU thread each (default: 2, or 1 on a 1-core machine)",
    )
    p.add_argument("--out", type=Path, help="run directories (default runs/suite[-quick])")
    p.add_argument(
        "--docs",
        type=Path,
        help="where RESULTS.md goes (default: docs for the default grid; a run of named "
        "settings or methods writes its report beside its runs, in --out, so that it does not "
        "replace the default grid's page with a part of it)",
    )
    p.add_argument(
        "--readme", type=Path, help="also refresh this README's suite-headline table block"
    )
    p.add_argument(
        "--settings",
        type=comma_list(SETTING_NAMES, "setting"),
        default=DEFAULT_SETTINGS,
        help=f"comma list (default: {','.join(DEFAULT_SETTINGS)}; "
        f"also: {','.join(EXTRA_SETTINGS)})",
    )
    p.add_argument(
        "--methods",
        type=comma_list(tuple(m.name for m in suite_methods()), "method"),
        default=DEFAULT_METHODS,
        help=f"comma list (default {','.join(DEFAULT_METHODS)}; also: "
        f"{','.join(m.name for m in suite_methods() if m.name not in DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--ledger",
        type=Path,
        help="results ledger: one small JSON record per finished cell, committed, from which "
        "the report is written; a cell whose record matches its config is skipped, a stale "
        "one is listed and its cell rerun (default results/ledger; with --quick, "
        "OUT/ledger)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing, only report (from the ledger alone: no run directory needed)",
    )
    p.set_defaults(func=run_suite)


def time_key(settings: tuple[str, ...], methods: tuple[str, ...]) -> str:
    """Which clock of ``suite.json`` an invocation adds to: the default grid's (what the
    3-hour budget is about), the full-training-set regime's, the small-CNN regime's, or the
    extra runs'."""
    if set(settings) == set(DEFAULT_SETTINGS) and set(methods) == set(DEFAULT_METHODS):
        return "elapsed_seconds"
    if set(settings) <= set(FULL_TRAIN):
        return "full_train_elapsed_seconds"
    if set(settings) <= set(REGIME):
        return "regime_elapsed_seconds"
    return "extra_elapsed_seconds"


def report_folder(args: argparse.Namespace, out: Path) -> Path:
    """Where the report goes without ``--docs``: ``docs`` for the default grid, else ``out``.

    The page in ``docs`` is the default grid's; written after a run of a few settings or
    methods from a ledger that holds only those, it would lose every other section."""
    default = set(args.settings) == set(DEFAULT_SETTINGS) and set(args.methods) == set(
        DEFAULT_METHODS
    )
    return Path("docs") if default else out


def run_suite(args: argparse.Namespace) -> int:
    from mwnet.run.records import read_json, write_json
    from mwnet.suite.grid import setting_named
    from mwnet.suite.ledger import Ledger, default_ledger
    from mwnet.suite.report import write_report
    from mwnet.suite.runner import SUITE_FILE, run_plan
    from mwnet.suite.selection import Planner

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    scale = QUICK if args.quick else FULL
    out = args.out or Path("runs") / ("suite-quick" if args.quick else "suite")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the suite's runs")
    ledger = args.ledger or default_ledger(out, args.quick)
    if ledger.exists() and not ledger.is_dir():
        raise ValueError(f"--ledger {ledger} is a file; give a directory for the records")
    # The suite's clocks live beside the records, so that the report needs no run directory.
    info_file = ledger / SUITE_FILE
    if not info_file.is_file() and (out / SUITE_FILE).is_file():
        info_file = out / SUITE_FILE  # a suite run before the ledger: its clocks move over
    info = read_json(info_file) if info_file.is_file() else {"elapsed_seconds": 0.0}
    info_file = ledger / SUITE_FILE
    if not args.report_only:
        planner = Planner(
            out, scale, [setting_named(s) for s in args.settings], args.methods, Ledger(ledger)
        )
        planner.ready()  # reads every record the plan needs now: the stale ones are listed
        for stale in planner.stale.values():
            print(f"stale ledger record, its cell runs again: {stale.describe()}", file=sys.stderr)
        hours = planner.estimated_core_hours()
        cost = "" if args.quick else f", about {hours:.1f} core-hours"
        wall = "" if args.quick else f" (about {hours / args.jobs:.1f} h)"
        print(
            f"{planner.total()} runs under {out} once every selection is made{cost}, "
            f"{args.jobs} at a time{wall}",
            file=sys.stderr,
        )
        key = time_key(args.settings, args.methods)
        start, before = time.perf_counter(), float(info.get(key, 0.0))
        info.update(jobs=args.jobs, scale=scale.name)

        def report(i: int, n: int, r) -> None:
            if r.status == "done":
                return
            # Saved after every cell, so an interrupted suite still counts its time.
            info[key] = before + time.perf_counter() - start
            # The machine's 1-minute load average, averaged over the finished runs: how
            # quiet the machine was while the clock ran.
            load = info.setdefault("load", {}).setdefault(key, {"runs": 0, "mean": 0.0})
            load["runs"] += 1
            load["mean"] += (os.getloadavg()[0] - load["mean"]) / load["runs"]
            info_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(info_file, info)
            if r.status == "failed":
                print(f"[{i}/{n}] {r.label}: stopped on a non-finite loss", file=sys.stderr)
                return
            val = "" if r.last_val_acc is None else f", val {r.last_val_acc:.1f} %"
            print(
                f"[{i}/{n}] {r.label}: last {r.last_test_acc:.2f} %{val} "
                f"({r.wall_time:.0f} s, {r.status})",
                file=sys.stderr,
            )

        run_plan(planner, args.jobs, report)
    command = "mwnet suite" + (" --quick" if args.quick else "")
    if args.readme:
        command += f" --readme {shlex.quote(str(args.readme))}"
    docs = args.docs or report_folder(args, out)
    written = write_report(out, docs, command, scale, info, args.readme, ledger)
    for path in written:
        print(path)
    return 0
