"""Which labels are wrong: ``mwnet issues`` on the suite's runs against cleanlab.

On the Fashion-MNIST suite's noisy settings (784-256-10 MLP, 12,000 training images,
30 epochs; the same corrupted labels, split and seed for every side):

* ``mwnet issues`` on (a) a plain cross-entropy run and (b) the weighting runs (MW-Net
  fast, CMW-Net fast), from the signals each run recorded (no extra training);
* cleanlab (``cleanlab.filter.find_label_issues`` for the flags,
  ``cleanlab.rank.get_label_quality_scores`` for the ranking) on out-of-sample predicted
  probabilities from 5-fold cross-validation (stratified) of the same model and schedule.

For each: AUROC of the score for the corrupted labels, precision and recall of the
flagged set, precision at k = the true number of wrong labels, the estimated noise rate,
and wall time (the run, or the 5 fold trainings, plus the scoring; all in this process
or its workers, one thread each). Then every side's flagged samples are excluded
(``data.exclude``) and cross-entropy is trained again on what is left; its last-epoch test
accuracy is reported beside the original runs'. It also reports the AUROC of every signal
a run records, which is how the report's default signal was chosen. The truth (which labels
were corrupted) is used only to score the sides, never by any of them.

cleanlab is installed here if missing (``pip install cleanlab``), never by the library.

    PYTHONPATH=src python benchmarks/bench_label_issues.py --jobs 2 \\
        --report docs/LABEL_ISSUES.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.label_issues import auroc, find_label_issues, precision_at_k, precision_recall
from mwnet.label_issues.score import SIGNALS
from mwnet.run.records import read_json
from mwnet.suite.grid import FULL, QUICK, SETTINGS, Scale, cells
from mwnet.suite.runner import _cell_config, run_cell, run_dir_of

NOISY = tuple(s.name for s in SETTINGS if s.noisy)
WEIGHTING = ("mwnet-fast", "cmwnet")
FOLDS = 5


def ensure_cleanlab() -> Any:
    try:
        return importlib.import_module("cleanlab")
    except ImportError:
        print("installing cleanlab for this benchmark...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "cleanlab"], check=True)
        return importlib.import_module("cleanlab")


def detection(score: np.ndarray, flagged: np.ndarray, corrupted: np.ndarray) -> dict:
    """How well a score and a flagged set find the corrupted labels."""
    precision, recall = precision_recall(flagged, corrupted)
    k = int(corrupted.sum())
    return {
        "auroc": auroc(-score, corrupted),
        "precision": precision,
        "recall": recall,
        "precision_at_k": precision_at_k(np.argsort(score, kind="stable"), corrupted, k),
        "estimated_noise_rate": float(flagged.mean()),
        "flagged": int(flagged.sum()),
    }


def cross_validated_probabilities(cfg: Any, seed: int, folds: int) -> tuple[np.ndarray, dict]:
    """Out-of-sample class probabilities for every training sample: ``folds`` trainings of
    the run's model and schedule, each on the other folds, predicting its own."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    from mwnet.train import loop
    from mwnet.train.evaluate import per_sample
    from mwnet.train.experiment import build_experiment, prepare_data

    data = prepare_data(cfg)
    labels = data.train_labels.numpy()
    probs = np.zeros((len(labels), data.num_classes))
    quiet_cfg = cfg.copy()
    quiet_cfg.eval_train = False
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    start = time.perf_counter()
    for train_part, held_out in splitter.split(np.zeros(len(labels)), labels):
        part = torch.from_numpy(train_part)
        fold = replace(
            data,
            train_images=data.train_images[part],
            train_labels=data.train_labels[part],
            true_labels=data.true_labels[part],
            corrupted=data.corrupted[part],
            source_index=data.train_index[part],
            # the folds are scored on their held-out part, not on the test set
            test_images=data.test_images[:1],
            test_labels=data.test_labels[:1],
        )
        with tempfile.TemporaryDirectory() as tmp:
            exp = build_experiment(quiet_cfg, data=fold)
            loop.Trainer(exp, Path(tmp), quiet=True).fit()
            held = torch.from_numpy(held_out)
            table = per_sample(
                exp.model,
                data.train_images[held],
                data.train_labels[held],
                exp.normalize,
                exp.device,
                500,
                reduce=lambda logits, y: logits.float().softmax(1),
            )
            probs[held_out] = table.numpy()
    return probs, {"train_seconds": time.perf_counter() - start, "data": data}


def _retrain(cell_cfg: Any, exclude_index: np.ndarray, out: Path, name: str) -> float:
    """Cross-entropy on the training set without ``exclude_index``: last-epoch test acc."""
    from mwnet.config import load_config
    from mwnet.train import loop

    summary_file = out / name / "summary.json"
    if summary_file.is_file():
        summary = read_json(summary_file)
        if summary["epochs_done"] == summary["epochs_total"]:
            return float(summary["last_test_acc"])
    out.mkdir(parents=True, exist_ok=True)
    listing = out / f"{name}-exclude.txt"
    listing.write_text("".join(f"{int(i)}\n" for i in exclude_index))
    cfg = load_config(
        None,
        [
            *cell_cfg.overrides,
            f"data.exclude={listing}",
            f"out_dir={out}",
            f"name={name}",
        ],
    )
    if (out / name / loop.CHECKPOINT).is_file():
        trainer = loop.resume(out / name, quiet=True)
    else:
        trainer, _ = loop.start(cfg, quiet=True)
    return float(trainer.fit()["last_test_acc"])


def measure(setting: str, seed: int, out: Path, scale: Scale, folds: int) -> dict:
    """Everything for one (setting, seed): runs, reports, cleanlab, retrainings."""
    ensure_cleanlab()
    import cleanlab.filter
    import cleanlab.rank

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    result_file = out / "results" / f"{setting}-seed{seed}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    grid = {
        c.method.name: c for c in cells(scale, (setting,), ("ce", *WEIGHTING)) if c.seed == seed
    }
    sides: dict[str, dict] = {}
    exclusions: dict[str, np.ndarray] = {}
    for method, cell in grid.items():
        run_cell(cell, out / "runs")
        run_dir = run_dir_of(out / "runs", cell)
        summary = read_json(run_dir / "summary.json")
        start = time.perf_counter()
        issues = find_label_issues(run_dir)
        report_seconds = time.perf_counter() - start
        corrupted = issues.corrupted
        side = detection(issues.score, issues.flagged, corrupted)
        mixture = find_label_issues(run_dir, threshold="mixture")
        side["mixture"] = detection(mixture.score, mixture.flagged, corrupted)
        side["signals"] = {}
        for signal in SIGNALS[1:]:
            try:
                other = find_label_issues(run_dir, signal=signal)
            except ValueError:
                continue
            side["signals"][signal] = auroc(-other.score, corrupted)
        side["seconds"] = float(summary["wall_time"]) + report_seconds
        side["run_test_acc"] = float(summary["last_test_acc"])
        sides[f"mwnet issues ({method})"] = side
        exclusions[f"mwnet issues ({method})"] = issues.index[issues.flagged]
    ce_cell = grid["ce"]
    cfg = _cell_config(ce_cell, out / "cv")
    cached = out / "cv" / f"{setting}-seed{seed}-probs.npz"
    if cached.is_file():  # the fold trainings are the slow part: kept across restarts
        with np.load(cached) as saved:
            probs, train_seconds = saved["probs"], float(saved["train_seconds"])
        from mwnet.train.experiment import prepare_data

        data = prepare_data(cfg)
    else:
        probs, info = cross_validated_probabilities(cfg, seed, folds)
        data, train_seconds = info["data"], info["train_seconds"]
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, probs=probs, train_seconds=train_seconds)
    labels = data.train_labels.numpy()
    corrupted = data.corrupted.numpy()
    start = time.perf_counter()
    flagged = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    quality = cleanlab.rank.get_label_quality_scores(labels, probs)
    side = detection(quality, flagged, corrupted)
    side["seconds"] = train_seconds + time.perf_counter() - start
    sides[f"cleanlab ({folds}-fold)"] = side
    exclusions[f"cleanlab ({folds}-fold)"] = data.train_index.numpy()[flagged]
    for name, index in exclusions.items():
        tag = name.replace(" ", "_").replace("(", "").replace(")", "")
        sides[name]["retrained_ce_test_acc"] = _retrain(
            ce_cell, index, out / "retrained" / setting, f"{tag}-seed{seed}"
        )
    result = {
        "setting": setting,
        "seed": seed,
        "true_noise_rate": float(corrupted.mean()),
        "sides": sides,
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2))
    return result


def _measure(args: tuple) -> dict:
    return measure(*args)


def _fmt(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(results: list[dict], scale: Scale, folds: int) -> str:
    titles = {s.name: s.title for s in SETTINGS}
    settings = [s for s in NOISY if any(r["setting"] == s for r in results)]
    sides = list(results[0]["sides"]) if results else []
    seeds = sorted({r["seed"] for r in results})
    seconds = sum(side["seconds"] for r in results for side in r["sides"].values())
    lines = [
        "# Label issues: `mwnet issues` against cleanlab (Fashion-MNIST)",
        "",
        "Generated by `PYTHONPATH=src python benchmarks/bench_label_issues.py` "
        f"(scale `{scale.name}`: {scale.hidden}-unit MLP, {scale.subset:,} training images, "
        f"{scale.epochs} epochs; seeds {', '.join(map(str, seeds))}; {seconds / 3600:.2f} h "
        "of training and scoring over all sides, retrainings not counted). Every side sees "
        "the same corrupted labels, split and seed; the truth "
        "is used only to score them. Mean ± std over seeds.",
        "",
        "- `mwnet issues (ce)`: the report of a plain cross-entropy run, from what the run "
        "recorded (no extra training).",
        "- `mwnet issues (mwnet-fast)`, `(cmwnet)`: the same report on the weighting runs "
        "(which also read the 1,000 clean images).",
        f"- `cleanlab ({folds}-fold)`: `cleanlab.filter.find_label_issues` (flags) and "
        "`cleanlab.rank.get_label_quality_scores` (ranking) on out-of-sample probabilities "
        f"from {folds}-fold stratified cross-validation of the same model and schedule.",
        "- cost: the run's own wall time (or the fold trainings') plus the scoring, one "
        "thread each; `x CE run` divides by the cross-entropy run's.",
        "- retrained: cross-entropy trained again without that side's flagged samples "
        "(`data.exclude`), last-epoch test accuracy; `run` is the original run's.",
        "- The wall times come from runs made one after another on a machine shared with "
        "other jobs, so the cost column is rough. By construction cleanlab's folds train "
        f"{folds - 1} cross-entropy runs' worth of samples ({folds} runs on "
        f"{folds - 1}/{folds} of the data) without the per-epoch evaluation passes, and "
        "`mwnet issues (ce)` costs the one cross-entropy run the user trains anyway.",
        "",
    ]
    for setting in settings:
        rs = [r for r in results if r["setting"] == setting]
        ce_cost = [r["sides"]["mwnet issues (ce)"]["seconds"] for r in rs]
        lines += [
            f"## {titles[setting]}",
            "",
            "| side | AUROC | precision | recall | P@k | est. noise rate | true rate | "
            "x CE run | test acc, run | test acc, retrained |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        true_rate = [r["true_noise_rate"] for r in rs]
        for side in sides:
            vals = [r["sides"][side] for r in rs]
            cost = [v["seconds"] / c for v, c in zip(vals, ce_cost, strict=True)]
            lines.append(
                f"| {side} | {_fmt([v['auroc'] for v in vals])} | "
                f"{_fmt([v['precision'] for v in vals])} | {_fmt([v['recall'] for v in vals])} | "
                f"{_fmt([v['precision_at_k'] for v in vals])} | "
                f"{_fmt([v['estimated_noise_rate'] for v in vals], 1, 100)} % | "
                f"{_fmt(true_rate, 1, 100)} % | {_fmt(cost, 2)} | "
                f"{_fmt([v.get('run_test_acc') for v in vals], 1)} | "
                f"{_fmt([v['retrained_ce_test_acc'] for v in vals], 1)} |"
            )
        lines.append("")
    lines += [
        "## Flags: majority threshold (default) against a two-component mixture",
        "",
        "| setting | side | precision / recall at 0.5 | precision / recall, mixture |",
        "|---|---|---|---|",
    ]
    for setting in settings:
        rs = [r for r in results if r["setting"] == setting]
        for side in (s for s in sides if s.startswith("mwnet")):
            vals = [r["sides"][side] for r in rs]
            mix = [v["mixture"] for v in vals]
            lines.append(
                f"| {titles[setting]} | {side} | {_fmt([v['precision'] for v in vals])} / "
                f"{_fmt([v['recall'] for v in vals])} | {_fmt([m['precision'] for m in mix])} / "
                f"{_fmt([m['recall'] for m in mix])} |"
            )
    lines += [
        "",
        "## Which signal: AUROC of every signal a run records",
        "",
        "| setting | run | " + " | ".join(SIGNALS[1:]) + " |",
        "|---|---|" + "---|" * len(SIGNALS[1:]),
    ]
    for setting in settings:
        rs = [r for r in results if r["setting"] == setting]
        for side in (s for s in sides if s.startswith("mwnet")):
            cells_ = []
            for signal in SIGNALS[1:]:
                cells_.append(_fmt([r["sides"][side]["signals"].get(signal) for r in rs]))
            lines.append(f"| {titles[setting]} | {side} | " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(NOISY))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/label-issues"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--quick", action="store_true", help="the suite's tiny scale")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    ensure_cleanlab()
    scale = QUICK if args.quick else FULL
    work = [
        (s, int(seed), args.out, scale, args.folds)
        for s in args.settings.split(",")
        for seed in args.seeds.split(",")
    ]
    if args.jobs <= 1:
        results = [measure(*w) for w in work]
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_measure, work)
    text = report(results, scale, args.folds)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
