"""``mwnet fit``: from noisy data to the one model to ship.

The stages, each an ordinary resumable run under one directory (``OUT_DIR/<name>/``):

1. Every method candidate (:mod:`mwnet.fitting.candidates`) trains with the user's config:
   the same data, split, noise and seed, ``jobs`` at a time.
2. The label issues are found in one of them, chosen without the test set: the weighting
   run with the highest validation accuracy whose weights do not favour the labels its own
   record finds suspicious (:mod:`mwnet.label_issues.weight_check`), else the best other
   usable run.
3. The continuations train from that run: CE again without its flagged labels, and its
   model fine-tuned on the trusted set.
4. Every usable candidate's shipped model file answers the validation split (held out of
   the noisy training data, never trained on), and the margin rule
   (:mod:`mwnet.fitting.choice`) picks one. A run that failed, diverged, collapsed, or
   whose weights the self-check flags is not a candidate.
5. Its model file is copied to ``OUT_DIR/<name>/model.pt``; ``fit.json`` records every
   candidate, the choice and the label-issue summary.

Running the same command again reads finished runs, continues unfinished ones and
chooses again from the same numbers.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.config import check_groups_read, check_run_name, load_config, to_yaml
from mwnet.fitting.candidates import Candidate, select
from mwnet.fitting.choice import Choice, choose, rule
from mwnet.run.model_file import MODEL_FILE
from mwnet.run.records import write_json

FIT_FILE = "fit.json"
DEFAULT_VAL_SIZE = 1000
"""Validation images held out when the config holds out none: 1,000 measure an accuracy
near 80 % to about 1.3 points (the paired difference of two candidates to far less)."""
VAL_FRACTION = 10
"""...but never more than a tenth of the training set."""


@dataclass(frozen=True)
class Entry:
    """One candidate after training: its run, its numbers, and whether it may be chosen."""

    candidate: Candidate
    title: str
    run_dir: Path
    status: str
    """"trained", "resumed", "done" (read), "failed" or "skipped" (no run to continue)."""
    summary: dict[str, Any] = field(default_factory=dict)
    excluded: str | None = None
    """Why it cannot be chosen (failed, diverged, collapsed, weights flagged), or None."""
    right: np.ndarray | None = None
    """Per validation image: its shipped model's answer equals the given label."""
    cpu_seconds: float | None = None
    """CPU time its training took (one thread: about its wall time on a quiet machine);
    for a run only read now, the figure recorded when it trained, if any."""

    @property
    def usable(self) -> bool:
        return self.excluded is None and self.right is not None

    @property
    def val_acc(self) -> float | None:
        return None if self.right is None else 100.0 * float(np.mean(self.right))

    @property
    def test_acc(self) -> float | None:
        value = self.summary.get("last_test_acc")
        return None if value is None else float(value)

    @property
    def seconds(self) -> float | None:
        value = self.summary.get("wall_time")
        return None if value is None else float(value)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` made: every candidate, the one chosen, the model file."""

    directory: Path
    entries: list[Entry]
    choice: Choice | None
    rule: str
    model_path: Path | None
    """``directory/model.pt``, the chosen candidate's model; None if none was usable."""
    issues_from: str | None
    label_issues: Any
    """The :class:`~mwnet.label_issues.LabelIssues` of the issue source run, or None."""
    val_samples: int
    elapsed: float

    @property
    def chosen(self) -> Entry | None:
        return None if self.choice is None else self.usable_entries[self.choice.chosen]

    @property
    def usable_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.usable]


def _split_overrides(candidate: Candidate) -> tuple[list[str], list[str]]:
    """A method candidate's options (``optim.lr`` of L2RW, the weighting net's step) are
    defaults the user's own overrides win over; its method name, and every key of a
    continuation (``optim.epochs=0`` of a fine-tune), are not."""
    if candidate.after is not None:
        return list(candidate.overrides), []
    soft = [o for o in candidate.overrides if not o.startswith("method.name=")]
    hard = [o for o in candidate.overrides if o not in soft]
    return hard, soft


def candidate_config(
    candidate: Candidate,
    preset: str | None,
    overrides: Sequence[str],
    base: Path | None,
    out: Path,
    extra: Sequence[str] = (),
    run_name: str | None = None,
) -> Any:
    """The run config of one candidate: the user's config, the candidate's method, its
    own directory under ``out`` (``run_name``, default the candidate's name); ``extra``
    are strict overrides (validation size, stage)."""
    hard, soft = _split_overrides(candidate)
    return load_config(
        preset,
        [*hard, *extra, f"out_dir={out}", f"name={run_name or candidate.name}"],
        base=base,
        defaults=[*soft, *overrides],
    )


def validation_size(probe: Any) -> int:
    """The config's ``data.val_size``, or (0) :data:`DEFAULT_VAL_SIZE` capped at a tenth of
    the training set."""
    if int(probe.data.val_size) > 0:
        return int(probe.data.val_size)
    from mwnet.data.preparation import prepare

    data = prepare(probe.data, int(probe.seed), meta_reader=_meta_reader(probe))
    n = len(data.train_labels)
    size = min(DEFAULT_VAL_SIZE, n // VAL_FRACTION)
    if size < 1:
        raise ValueError(
            f"fit holds out a validation split to choose its model, and {n} training samples "
            "are too few; use more data"
        )
    return size


def _meta_reader(cfg: Any) -> str | None:
    return "mwnet" if cfg.data.meta_source == "clean" else None


def _weights_flagged(summary: dict[str, Any]) -> bool:
    check = summary.get("weight_check") or {}
    return bool(check.get("favours_suspect_labels"))


def issue_source(results: Sequence[Any]) -> Any | None:
    """The run whose label issues the continuations use (a
    :class:`~mwnet.train.compare.Compared`): :func:`mwnet.train.compare.report_run` over
    the usable runs whose weights are not flagged."""
    from mwnet.train.compare import report_run

    trusted = [r for r in results if r.usable and not _weights_flagged(r.summary)]
    chosen, _ = report_run(trusted)
    return chosen


def _excluded(compared: Any) -> str | None:
    if compared.status == "failed":
        return f"failed: {compared.error}"
    if compared.verdict is not None:
        return compared.verdict
    if _weights_flagged(compared.summary):
        return "weights favour the labels its own record finds suspicious"
    return None


def validation_answers(run_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Whether the run's model file answers each validation image with its given label:
    the shipped file itself, as ``mwnet predict`` would apply it."""
    from mwnet.predict import load_model

    model = load_model(run_dir / MODEL_FILE)
    answers = []
    with torch.inference_mode():
        for start in range(0, len(images), 500):
            answers.append(model.logits(images[start : start + 500]).argmax(1))
    return (torch.cat(answers) == labels.cpu()).numpy()


def _continuation_overrides(candidate: Candidate, source_dir: Path) -> list[str]:
    if candidate.stage == "retrain":  # a class flagged whole keeps its samples
        return [f"data.exclude={source_dir}", "data.exclude_spares_classes=true"]
    return [f"model.init_from={source_dir}"]


def fit(
    preset: str | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Path | None = None,
    candidates: Sequence[str] | None = None,
    jobs: int = 1,
    name: str | None = None,
    montage: int = 36,
    stream: Any = None,
) -> FitResult:
    """Train the candidates on the data ``preset``/``base`` and ``overrides`` describe,
    find the label issues, train the continuations, and ship the candidate chosen on a
    validation split of the noisy training data.

    Args:
        preset: a preset name (``mwnet presets``), or None.
        overrides: ``key=value`` config overrides shared by every candidate (not
            ``method.name``: the candidates are the methods).
        base: a saved config to start from (another run's ``config.yaml``).
        candidates: names from :mod:`mwnet.fitting.candidates` or method names, in order
            of preference; None: the defaults for the data (with or without a trusted set).
        jobs: runs trained at a time, in worker processes with one thread each (started
            fresh, "spawn": a script that calls ``fit`` with ``jobs`` > 1 must call it
            under ``if __name__ == "__main__":``, as for any multiprocessing pool).
        name: the directory under ``out_dir`` (default ``<preset>-fit-seed<seed>``).
        montage: images in the label-issue picture (0: none).
        stream: where the table goes (default standard output).

    Raises:
        ConfigError / ValueError: a bad preset, override or candidate name, checked for
            every candidate before anything trains.
    """
    stream = sys.stdout if stream is None else stream
    if any(o.split("=", 1)[0] == "method.name" for o in overrides):
        raise ValueError(
            "fit trains several methods and chooses among them: drop method.name=... and "
            "name them with --candidates instead (or use `mwnet train` for one method)"
        )
    probe = load_config(preset, base=base, defaults=list(overrides))
    trusted = probe.data.meta_source == "clean"
    chosen_candidates = select(None if candidates is None else list(candidates), trusted)
    methods = list(dict.fromkeys(c.method for c in chosen_candidates))
    check_groups_read(list(overrides), methods, probe.data)
    if name is not None:
        check_run_name(name, "--name")
    out = Path(probe.out_dir) / (name or f"{probe.preset or 'custom'}-fit-seed{probe.seed}")
    val_size = validation_size(probe)
    val = [f"data.val_size={val_size}"]
    base_candidates = [c for c in chosen_candidates if c.after is None]
    later = [c for c in chosen_candidates if c.after is not None]
    configs = [candidate_config(c, preset, overrides, base, out, val) for c in base_candidates]
    for candidate in later:  # a bad override fails now, not after an hour of training
        candidate_config(candidate, preset, overrides, base, out, [*val, "model.init_from=x"])

    from mwnet.train.compare import announce, run_comparison

    out.mkdir(parents=True, exist_ok=True)
    earlier_cpu = _recorded_cpu(out / FIT_FILE)
    start = time.perf_counter()
    announce(configs, out, jobs)
    first = run_comparison(configs, jobs)
    source = issue_source(first)
    issues = None
    compared = dict(zip((c.name for c in base_candidates), first, strict=True))
    titles = {c.name: c.title for c in base_candidates}
    if source is not None:
        from mwnet.label_issues.command import write_report

        issues, _ = write_report(source.run_dir, source.run_dir, montage=montage)
        source_title = titles[source.run_dir.name]
        # named after the run they continue: a rerun whose source changed (a run that
        # failed before finished now) trains its own, never resumes another source's
        follow = [
            candidate_config(
                c,
                preset,
                overrides,
                base,
                out,
                [*val, *_continuation_overrides(c, source.run_dir)],
                run_name=f"{source.run_dir.name}-then-{c.stage}",
            )
            for c in later
        ]
        if follow:
            announce(follow, out, jobs)
        for candidate, result in zip(later, run_comparison(follow, jobs), strict=True):
            compared[candidate.name] = result
            how = "fine-tune" if candidate.stage == "finetune" else "CE without flagged labels"
            titles[candidate.name] = f"{source_title} → {how}"

    from mwnet.data.preparation import prepare

    held = prepare(configs[0].data, int(configs[0].seed), meta_reader=_meta_reader(configs[0]))
    entries = []
    for candidate in chosen_candidates:
        result = compared.get(candidate.name)
        if result is None:
            entries.append(
                Entry(
                    candidate,
                    candidate.title,
                    out / candidate.name,
                    "skipped",
                    excluded="no usable run to continue",
                )
            )
            continue
        excluded = _excluded(result)
        right = None
        if result.status != "failed":
            right = validation_answers(result.run_dir, held.val_images, held.val_labels)
        cpu = result.cpu_seconds
        if cpu is None:
            cpu = earlier_cpu.get(str(result.run_dir))
        entries.append(
            Entry(
                candidate,
                titles[candidate.name],
                result.run_dir,
                result.status,
                result.summary,
                excluded,
                right,
                cpu,
            )
        )
    usable = [e for e in entries if e.usable]
    decision = choose([e.right for e in usable])
    model_path = why = None
    if decision is None:
        why = "no candidate is usable: every run failed, diverged or was flagged"
    else:
        why = rule(decision, [e.title for e in usable])
        model_path = out / MODEL_FILE
        _copy_atomically(usable[decision.chosen].run_dir / MODEL_FILE, model_path)
    result = FitResult(
        directory=out,
        entries=entries,
        choice=decision,
        rule=why,
        model_path=model_path,
        issues_from=None if source is None else titles[source.run_dir.name],
        label_issues=issues,
        val_samples=int(val_size),
        elapsed=time.perf_counter() - start,
    )
    write_json(out / FIT_FILE, record(result, configs[0]))
    from mwnet.fitting.report import print_result

    print_result(result, stream)
    return result


def _recorded_cpu(path: Path) -> dict[str, float]:
    """Each run's CPU time as an earlier ``fit.json`` recorded it, by run directory."""
    from mwnet.run.records import read_json

    try:
        earlier = read_json(path)
        rows = earlier.get("candidates") or []
    except (OSError, ValueError, AttributeError):
        return {}
    return {
        str(r["run_dir"]): float(r["cpu_seconds"])
        for r in rows
        if isinstance(r, dict) and r.get("cpu_seconds") is not None and "run_dir" in r
    }


def _copy_atomically(source: Path, target: Path) -> None:
    from mwnet.run.atomic import atomic_write

    with atomic_write(target, "wb") as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)


def record(result: FitResult, cfg: Any) -> dict[str, Any]:
    """``fit.json``: every candidate's numbers, the choice and the label issues."""
    chosen = result.chosen

    def rounded(value: float | None, digits: int = 2) -> float | None:
        return None if value is None else round(float(value), digits)

    return {
        "config": to_yaml(cfg),
        "val_samples": result.val_samples,
        "candidates": [
            {
                "name": e.candidate.name,
                "title": e.title,
                "run_dir": str(e.run_dir),
                "status": e.status,
                "excluded": e.excluded,
                "val_acc": rounded(e.val_acc),
                "test_acc": rounded(e.test_acc),
                "train_seconds": rounded(e.seconds, 1),
                "cpu_seconds": rounded(e.cpu_seconds, 1),
            }
            for e in result.entries
        ],
        "chosen": None if chosen is None else chosen.candidate.name,
        "rule": result.rule,
        "margin": None if result.choice is None else rounded(result.choice.margin, 3),
        "threshold": None if result.choice is None else rounded(result.choice.threshold, 3),
        "model": None if result.model_path is None else str(result.model_path),
        "label_issues_from": result.issues_from,
        "label_issues": None if result.label_issues is None else result.label_issues.summary(),
        "elapsed_seconds": round(result.elapsed, 1),
    }
