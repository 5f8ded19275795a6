"""``mwnet compare``: several methods on the same data, side by side, and the labels to fix.

What a user with noisy labels wants to know first is whether learned weighting beats plain
training on their data, at what cost, and which labels look wrong. This trains each method
as an ordinary run (same config but ``method.name``: same data, split, noise and seed),
``jobs`` at a time in worker processes with one CPU thread each, then writes and prints a
table of accuracy and cost and the label-issue report of one weighting run, chosen without
the test set. Like the suite, it resumes: finished runs are read, interrupted ones
continued. A method that stops on an error is marked failed and the others go on; a run
that finished but diverged is marked and never chosen.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mwnet.config import check_groups_read, check_run_name, load_config, to_yaml
from mwnet.methods import method_descriptor, method_names
from mwnet.run.records import read_json, read_jsonl, write_json

COMPARISON_FILE = "comparison.json"

DIVERGED_LOSS_FACTOR = 10.0
"""A last-epoch training loss above this many times ``ln(classes)`` (the loss of answering
every class equally) is a diverged model's, never a trained one's."""


@dataclass(frozen=True)
class Compared:
    """One method's run in a comparison."""

    method: str
    run_dir: Path
    summary: dict[str, Any]
    status: str
    """"trained", "resumed", "done" (finished before: only read) or "failed"."""
    peak_rss_mb: float | None
    """Peak resident memory of the process that trained it (this process's, if in it);
    None where nothing trained now and no earlier record of this comparison has it."""
    cpu_seconds: float | None = None
    """CPU time the training took: on a quiet machine, about its wall time (one thread)."""
    error: str | None = None
    """Why the run stopped (status "failed"), in one line."""
    verdict: str | None = None
    """Why a finished run's numbers describe no trained model ("diverged: ...",
    "collapsed: ..."); None for a run that trained."""

    @property
    def usable(self) -> bool:
        """Finished and not diverged: a run whose label signals mean something."""
        return self.status != "failed" and self.verdict is None


def method_configs(
    preset: str | None,
    overrides: list[str],
    methods: list[str],
    base: Path | None = None,
    name: str | None = None,
) -> tuple[Path, list[Any]]:
    """The comparison's directory and one config per method, identical but the method.
    Each method reads the option groups of ``overrides`` it reads (``method.mwnet.*`` the
    weighting methods); a group none of them reads is an error.

    Raises:
        ConfigError: a bad preset, override or method name (checked for every method
            before anything trains).
    """
    probe = load_config(preset, base=base, defaults=overrides)
    check_groups_read(overrides, methods, probe.data)
    if name is not None:
        check_run_name(name, "--name")
    stem = name or probe.name or f"{probe.preset or 'custom'}-compare-seed{probe.seed}"
    out = Path(probe.out_dir) / stem
    configs = [
        load_config(
            preset,
            [f"method.name={m}", f"out_dir={out}", f"name={m}"],
            base=base,
            defaults=overrides,
        )
        for m in methods
    ]
    return out, configs


def verdict_of(summary: dict[str, Any], run_dir: Path) -> str | None:
    """Why a finished run learned nothing to trust, or None.

    Diverged: no better on the validation split than the constant answer (the suite's
    rule, :func:`mwnet.suite.selection.at_chance`), or a last-epoch training loss that is
    not finite or far above the uniform answer's. Collapsed: the weighting net gave every
    sample of a batch weight 0 in the last epoch (the training log's warning)."""
    from mwnet.suite.selection import at_chance

    if at_chance(summary):
        return "diverged: at chance on the validation split"
    try:
        records = read_jsonl(run_dir / "metrics.jsonl")
    except (OSError, ValueError):
        records = []
    last = records[-1] if records else {}
    loss = last.get("train_loss")
    classes = len((summary.get("class_counts") or {}).get("given") or [])
    if loss is not None and (
        not math.isfinite(float(loss))
        or (classes > 1 and float(loss) > DIVERGED_LOSS_FACTOR * math.log(classes))
    ):
        return f"diverged: training loss {float(loss):.3g}"
    if last.get("zero_weight_steps"):
        return f"collapsed: every weight 0 on {last['zero_weight_steps']} steps"
    return None


def _method_errors() -> tuple[type[BaseException], ...]:
    """Errors that end one method's run and not the comparison: the ones ``mwnet train``
    shows as one ``mwnet: error`` line (a non-finite step, a bad run directory, ...)."""
    from mwnet.core.checks import NonFiniteError
    from mwnet.run import CheckpointError, RunDirBusy, RunDirError

    return (ValueError, OSError, CheckpointError, RunDirError, RunDirBusy, NonFiniteError)


def _train_one(cfg: Any) -> Compared:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mwnet.train import loop

    cfg.threads = cfg.threads or 1
    name = str(cfg.method.name)
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        summary, run_dir, status = loop.train_to_end(cfg, quiet=True, label=name)
    except _method_errors() as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return Compared(name, Path(cfg.out_dir) / cfg.name, {}, "failed", None, error=line)
    verdict = verdict_of(summary, run_dir)
    if status == "done":  # nothing trained here: this process's figures are not the run's
        return Compared(name, run_dir, summary, status, None, None, verdict=verdict)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Compared(name, run_dir, summary, status, after.ru_maxrss / 1024, cpu, verdict=verdict)


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
    first method; a failed run's row holds its error, a diverged run's accuracy is marked."""
    first = results[0]
    base = None if first.status == "failed" else float(first.summary["wall_time"]) or 1.0
    lines = [
        "| method | test acc, last epoch | best (epoch) | train time | x "
        f"{first.method} | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.status == "failed":
            error = (r.error or "").replace("|", "/")
            lines.append(f"| {r.method} | failed: {error} | n/a | n/a | n/a | n/a |")
            continue
        s = r.summary
        best = s.get("best_test_acc")
        best_text = "n/a" if best is None else f"{best:.2f} % ({s['best_epoch']})"
        last = f"{s['last_test_acc']:.2f} %" + (f" ({r.verdict})" if r.verdict else "")
        wall = float(s["wall_time"])
        ratio = "n/a" if base is None else f"{wall / base:.2f}"
        memory = "n/a" if r.peak_rss_mb is None else f"{r.peak_rss_mb / 1024:.2f} GB"
        lines.append(
            f"| {r.method} | {last} | {best_text} | {wall / 60:.1f} min | {ratio} | {memory} |"
        )
    return "\n".join(lines)


def report_run(results: list[Compared]) -> tuple[Compared | None, str]:
    """The run whose label-issue report to show (and whose flags ``--retrain`` drops), and
    the rule that chose it; the test set chooses nothing.

    Among the finished, not diverged weighting runs (all finished runs if none weights):
    the highest last-epoch accuracy on the validation split of the noisy training data,
    the first of equals (the suite's rule, :func:`mwnet.suite.selection.pick`); without a
    validation split (``data.val_size=0``), the first listed. None when no run qualifies.
    """
    from mwnet.suite.selection import pick

    usable = [r for r in results if r.usable]
    weighting = [
        r for r in usable if r.method in method_names() and method_descriptor(r.method).weighting
    ]
    pool, kind = (weighting, "weighting run") if weighting else (usable, "run")
    if not pool:
        return None, "every run failed or diverged"
    k = pick([r.summary.get("last_val_acc") for r in pool])
    if k is not None:
        samples = pool[k].summary.get("val_samples")
        return pool[k], (
            f"the {kind} with the highest last-epoch validation accuracy, on {samples} "
            "held-out training samples"
        )
    return pool[0], f"the first {kind} listed: no validation split, data.val_size=0"


def without_flagged(cfg: Any, issues_csv: Path) -> Any:
    """``cfg`` (the comparison's first method) trained again without the samples the
    label-issue report flagged: ``data.exclude`` set, a run directory of its own."""
    from omegaconf import OmegaConf

    from mwnet.config import validate

    name = f"{cfg.method.name}-without-flagged"
    # unattended: a class flagged whole keeps its samples (with a warning), not an error
    edits = {"exclude": str(issues_csv), "exclude_spares_classes": True}
    cleaned = OmegaConf.merge(cfg, {"data": edits, "name": name})
    validate(cleaned)
    return cleaned


def announce(configs: list[Any], out: Path, jobs: int) -> None:
    """What is about to happen: which methods train, and which are only read."""
    from mwnet.train.loop import finished

    names = [str(c.method.name) for c in configs]
    runs = [Path(c.out_dir) / c.name for c in configs]
    todo = [n for n, run in zip(names, runs, strict=True) if not finished(run)]
    if not todo:
        print(
            f"{', '.join(names)}: already finished under {out}; reading them, nothing to train",
            file=sys.stderr,
        )
        return
    done = [n for n in names if n not in todo]
    also = f" ({', '.join(done)} already finished)" if done else ""
    print(
        f"training {', '.join(todo)} on the same data under {out}{also}, "
        f"{min(jobs, len(todo))} at a time...",
        file=sys.stderr,
    )


def _earlier_record(out: Path) -> dict[str, Any] | None:
    """The comparison.json an earlier run of this comparison wrote, if readable."""
    try:
        record = read_json(out / COMPARISON_FILE)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _with_recorded_cost(r: Compared, earlier: dict[str, Any] | None) -> Compared:
    """A run only read now keeps the memory and CPU time measured when it trained (from
    the earlier comparison.json; unknown if it trained elsewhere)."""
    if r.status != "done" or earlier is None:
        return r
    for old in earlier.get("runs") or []:
        if isinstance(old, dict) and old.get("run_dir") == str(r.run_dir):
            peak, cpu = old.get("peak_rss_mb"), old.get("cpu_seconds")
            return replace(r, peak_rss_mb=peak, cpu_seconds=cpu)
    return r


def failure_line(record: dict[str, Any]) -> str | None:
    """The one ``mwnet: error`` line for a comparison in which a run failed, or None."""
    failed = [r for r in record["runs"] if r["status"] == "failed"]
    if not failed:
        return None
    what = "; ".join(f"{r['method']}: {r['error']}" for r in failed)
    return (
        f"mwnet: error: {len(failed)} of {len(record['runs'])} runs failed ({what}); the "
        "table shows the others"
    )


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
    once more without the flagged samples (the loop a user would close next). A method
    that fails leaves the others to finish; :func:`failure_line` says so afterwards."""
    stream = sys.stdout if stream is None else stream
    from mwnet.data.label_edits import ISSUES_FILE
    from mwnet.label_issues.command import write_report

    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_record(out)
    announce(configs, out, jobs)
    start = time.perf_counter()
    results = run_comparison(configs, jobs)
    chosen, rule = report_run(results)
    issues = written = None
    if chosen is not None:
        issues, written = write_report(chosen.run_dir, chosen.run_dir, montage=montage)
        if retrain:
            cleaned = _train_one(without_flagged(configs[0], chosen.run_dir / ISSUES_FILE))
            label = f"{cleaned.method}, {chosen.method}'s flagged labels removed"
            results.append(replace(cleaned, method=label))
    results = [_with_recorded_cost(r, earlier) for r in results]
    elapsed = time.perf_counter() - start
    trained = any(r.status != "done" for r in results)  # a failed run trained until it failed
    if not trained and earlier is not None and "elapsed_seconds" in earlier:
        elapsed, jobs = float(earlier["elapsed_seconds"]), earlier.get("jobs", jobs)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 1)

    record = {
        "elapsed_seconds": elapsed,
        "jobs": jobs,
        "config": to_yaml(configs[0]),
        "runs": [
            {
                "method": r.method,
                "run_dir": str(r.run_dir),
                "status": r.status,
                "error": r.error,
                "verdict": r.verdict,
                "last_test_acc": r.summary.get("last_test_acc"),
                "best_test_acc": r.summary.get("best_test_acc"),
                "best_epoch": r.summary.get("best_epoch"),
                "last_val_acc": r.summary.get("last_val_acc"),
                "train_seconds": r.summary.get("wall_time"),
                "peak_rss_mb": rounded(r.peak_rss_mb),
                "cpu_seconds": rounded(r.cpu_seconds),
            }
            for r in results
        ],
        "label_issues_from": None if chosen is None else chosen.method,
        "label_issues_chosen_by": rule,
        "label_issues": None if issues is None else issues.summary(),
    }
    write_json(out / COMPARISON_FILE, record)
    print(table(results), file=stream)
    if chosen is None:
        print(f"\nno label-issue report: {rule}", file=stream)
        if retrain:
            print("--retrain skipped: no run to take the flagged labels from", file=stream)
    else:
        print(f"\nlabel issues, from the {chosen.method} run (chosen as {rule}):", file=stream)
        print(issues.headline(), file=stream)
        print(f"  files: {', '.join(str(p) for p in written)}", file=stream)
    pngs = sorted(p for r in results for p in r.run_dir.glob("*.png"))
    print(f"plots: {', '.join(str(p) for p in pngs)}", file=stream)
    print(f"comparison: {out / COMPARISON_FILE} ({elapsed / 60:.1f} min in all)", file=stream)
    return record
