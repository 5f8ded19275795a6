"""``mwnet compare``: several methods on the same data, side by side, and the labels to fix.

What a user with noisy labels wants to know first is whether learned weighting beats plain
training on their data, at what cost, and which labels look wrong. This trains each method
as an ordinary run (same config but ``method.name``: same data, split, noise and seed),
``jobs`` at a time in worker processes with one CPU thread each, then writes and prints a
table of accuracy and cost and the label-issue report of the best weighting run. Like the
suite, it resumes: finished runs are read, interrupted ones continued.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mwnet.run.records import write_json
from mwnet.train.config import WEIGHTING, load_config, to_yaml

COMPARISON_FILE = "comparison.json"


@dataclass(frozen=True)
class Compared:
    """One method's run in a comparison."""

    method: str
    run_dir: Path
    summary: dict[str, Any]
    status: str
    peak_rss_mb: float
    """Peak resident memory of the process that trained it (this process's, if in it)."""
    cpu_seconds: float = 0.0
    """CPU time the training took: on a quiet machine, about its wall time (one thread)."""


def method_configs(
    preset: str | None,
    overrides: list[str],
    methods: list[str],
    base: Path | None = None,
    name: str | None = None,
) -> tuple[Path, list[Any]]:
    """The comparison's directory and one config per method, identical but the method.

    Raises:
        ConfigError: a bad preset, override or method name (checked for every method
            before anything trains).
    """
    probe = load_config(preset, overrides, base=base)
    stem = name or probe.name or f"{probe.preset or 'custom'}-compare-seed{probe.seed}"
    out = Path(probe.out_dir) / stem
    configs = [
        load_config(
            preset, [*overrides, f"method.name={m}", f"out_dir={out}", f"name={m}"], base=base
        )
        for m in methods
    ]
    return out, configs


def _train_one(cfg: Any) -> Compared:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mwnet.train import loop

    cfg.threads = cfg.threads or 1
    before = resource.getrusage(resource.RUSAGE_SELF)
    summary, run_dir, status = loop.train_to_end(cfg, quiet=True, label=str(cfg.method.name))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Compared(str(cfg.method.name), run_dir, summary, status, after.ru_maxrss / 1024, cpu)


def _thread_lock_for_tqdm() -> None:
    """tqdm's default lock is a multiprocessing one, which a pool worker that exits leaves
    behind ("leaked semaphore" warnings at shutdown); a worker only needs a thread lock."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def run_comparison(configs: list[Any], jobs: int) -> list[Compared]:
    """Train every config to its end, ``jobs`` at a time; results in the configs' order."""
    if jobs <= 1 or len(configs) == 1:
        return [_train_one(cfg) for cfg in configs]
    context = multiprocessing.get_context("spawn")  # fresh workers, not forked thread pools
    with context.Pool(min(jobs, len(configs)), initializer=_thread_lock_for_tqdm) as pool:
        return pool.map(_train_one, configs)


def table(results: list[Compared]) -> str:
    """The side-by-side Markdown table: accuracy, time and memory, cost relative to the
    first method."""
    base = float(results[0].summary["wall_time"]) or 1.0
    lines = [
        "| method | test acc, last epoch | best (epoch) | train time | x "
        f"{results[0].method} | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        best = s.get("best_test_acc")
        best_text = "n/a" if best is None else f"{best:.2f} % ({s['best_epoch']})"
        wall = float(s["wall_time"])
        lines.append(
            f"| {r.method} | {s['last_test_acc']:.2f} % | {best_text} | {wall / 60:.1f} min | "
            f"{wall / base:.2f} | {r.peak_rss_mb / 1024:.2f} GB |"
        )
    return "\n".join(lines)


def report_run(results: list[Compared]) -> Compared:
    """The run whose label-issue report to show: the weighting run with the best last-epoch
    accuracy, or the best run if none weights."""
    weighting = [r for r in results if r.method in WEIGHTING] or results
    return max(weighting, key=lambda r: float(r.summary["last_test_acc"]))


def without_flagged(cfg: Any, issues_csv: Path) -> Any:
    """``cfg`` (the comparison's first method) trained again without the samples the
    label-issue report flagged: ``data.exclude`` set, a run directory of its own."""
    from omegaconf import OmegaConf

    from mwnet.train.config import validate

    name = f"{cfg.method.name}-without-flagged"
    cleaned = OmegaConf.merge(cfg, {"data": {"exclude": str(issues_csv)}, "name": name})
    validate(cleaned)
    return cleaned


def compare(
    configs: list[Any],
    out: Path,
    jobs: int,
    montage: int = 36,
    retrain: bool = False,
    stream: Any = None,
) -> dict[str, Any]:
    """Run the comparison, write ``comparison.json`` and the label issues, print it all
    (to ``stream``, default standard output). With ``retrain`` the first method is trained
    once more without the flagged samples (the loop a user would close next)."""
    stream = sys.stdout if stream is None else stream
    from mwnet.data.label_edits import ISSUES_FILE
    from mwnet.label_issues.command import write_report

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_comparison(configs, jobs)
    chosen = report_run(results)
    issues, written = write_report(chosen.run_dir, chosen.run_dir, montage=montage)
    if retrain:
        cleaned = _train_one(without_flagged(configs[0], chosen.run_dir / ISSUES_FILE))
        label = f"{cleaned.method}, {chosen.method}'s flagged labels removed"
        results.append(replace(cleaned, method=label))
    elapsed = time.perf_counter() - start
    record = {
        "elapsed_seconds": elapsed,
        "jobs": jobs,
        "config": to_yaml(configs[0]),
        "runs": [
            {
                "method": r.method,
                "run_dir": str(r.run_dir),
                "status": r.status,
                "last_test_acc": r.summary["last_test_acc"],
                "best_test_acc": r.summary.get("best_test_acc"),
                "best_epoch": r.summary.get("best_epoch"),
                "train_seconds": r.summary["wall_time"],
                "peak_rss_mb": round(r.peak_rss_mb, 1),
                "cpu_seconds": round(r.cpu_seconds, 1),
            }
            for r in results
        ],
        "label_issues_from": chosen.method,
        "label_issues": issues.summary(),
    }
    write_json(out / COMPARISON_FILE, record)
    print(table(results), file=stream)
    print(f"\nlabel issues, from the {chosen.method} run:", file=stream)
    print(issues.headline(), file=stream)
    print(f"  files: {', '.join(str(p) for p in written)}", file=stream)
    pngs = sorted(p for r in results for p in r.run_dir.glob("*.png"))
    print(f"plots: {', '.join(str(p) for p in pngs)}", file=stream)
    print(f"comparison: {out / COMPARISON_FILE} ({elapsed / 60:.1f} min in all)", file=stream)
    return record
