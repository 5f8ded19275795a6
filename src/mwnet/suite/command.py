"""``mwnet suite``: run (or resume) the Fashion-MNIST suite, then write its report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from mwnet.argtypes import comma_list
from mwnet.suite.grid import DEFAULT_METHODS, FULL, METHOD_NAMES, QUICK, SETTING_NAMES


def add_suite(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "suite",
        help="run the Fashion-MNIST evidence suite (methods x settings x seeds) and report",
        description="Train every method on every setting and seed (each cell an ordinary run "
        "directory under --out), skipping finished cells and resuming interrupted ones, then "
        "write RESULTS.md and plots to --docs. The full suite takes under 2 hours on a 2-core "
        "CPU; --quick is a tiny version for smoke tests.",
    )
    p.add_argument("--quick", action="store_true", help="tiny cells: one seed, 2 epochs")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs in parallel, one CPU thread each (default: 2, or 1 on a 1-core machine)",
    )
    p.add_argument("--out", type=Path, help="run directories (default runs/suite[-quick])")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where RESULTS.md goes")
    p.add_argument(
        "--readme", type=Path, help="also refresh this README's suite-headline table block"
    )
    p.add_argument(
        "--settings",
        type=comma_list(SETTING_NAMES, "setting"),
        default=SETTING_NAMES,
        help=f"comma list (default all: {','.join(SETTING_NAMES)})",
    )
    p.add_argument(
        "--methods",
        type=comma_list(METHOD_NAMES, "method"),
        default=DEFAULT_METHODS,
        help=f"comma list (default {','.join(DEFAULT_METHODS)}; also: "
        f"{','.join(m for m in METHOD_NAMES if m not in DEFAULT_METHODS)})",
    )
    p.add_argument("--report-only", action="store_true", help="train nothing, only report")
    p.set_defaults(func=run_suite)


def run_suite(args: argparse.Namespace) -> int:
    from mwnet.run.records import read_json, write_json
    from mwnet.suite.grid import cells
    from mwnet.suite.report import write_report
    from mwnet.suite.runner import SUITE_FILE, run_cells

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    scale = QUICK if args.quick else FULL
    out = args.out or Path("runs") / ("suite-quick" if args.quick else "suite")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the suite's runs")
    todo = cells(scale, args.settings, args.methods)
    info_file = out / SUITE_FILE
    info = read_json(info_file) if info_file.is_file() else {"elapsed_seconds": 0.0}
    if not args.report_only:
        print(f"{len(todo)} runs under {out}, {args.jobs} at a time", file=sys.stderr)
        # The default grid's time is what "under 2 hours" is about; extra runs are kept apart.
        whole = set(args.methods) == set(DEFAULT_METHODS) and len(args.settings) == len(
            SETTING_NAMES
        )
        key = "elapsed_seconds" if whole else "extra_elapsed_seconds"
        start, before = time.perf_counter(), float(info.get(key, 0.0))
        info.update(jobs=args.jobs, scale=scale.name)

        def report(i: int, n: int, r) -> None:
            if r.status == "done":
                return
            # Saved after every cell, so an interrupted suite still counts its time.
            info[key] = before + time.perf_counter() - start
            write_json(info_file, info)
            print(
                f"[{i}/{n}] {r.label}: best {r.best_test_acc:.2f} %, last "
                f"{r.last_test_acc:.2f} % ({r.wall_time:.0f} s, {r.status})",
                file=sys.stderr,
            )

        run_cells(todo, out, args.jobs, report)
    command = "mwnet suite" + (" --quick" if args.quick else "")
    if args.readme:
        command += f" --readme {shlex.quote(str(args.readme))}"
    written = write_report(out, args.docs, command, scale, info, args.readme)
    for path in written:
        print(path)
    return 0
