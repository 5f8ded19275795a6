"""Turn the suite's results into docs/RESULTS.md, its plots and the README table.

Everything here reads each cell's :class:`~mwnet.suite.results.Result` (``summary.json``,
``metrics.jsonl`` and a few numbers derived from the per-sample files), from the run
directories or from the ledger alone (:mod:`mwnet.suite.ledger`), never live training
state, so the report can be regenerated from a finished or partly finished suite at any
time, on any machine that has the ledger. Numbers in the text are
computed, not typed: a hand-written reading between the ``reading`` markers of an existing
RESULTS.md is kept across regenerations, everything else is rewritten.

Every table reports each method at the hyperparameters selected on the validation split
(:mod:`mwnet.suite.selection`); the test set is read for nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.run.atomic import atomic_write
from mwnet.suite.grid import (
    CLEAN_SIZE_METHODS,
    LRS,
    METHOD_NAMES,
    METHODS,
    NO_CLEAN_METHODS,
    SETTINGS,
    WEIGHT_LRS,
    MethodSpec,
    Scale,
    Setting,
    candidates,
    methods_of,
    seeds_of,
    setting_named,
)
from mwnet.suite.ledger import Ledger
from mwnet.suite.results import Result, these_versions, this_machine
from mwnet.suite.selection import (
    Planner,
    Selection,
    State,
    run_dir_of,
    state_from,
    state_of,
)

READING_START = "<!-- reading -->"
READING_END = "<!-- /reading -->"
HEADLINE_START = "<!-- suite-headline -->"
HEADLINE_END = "<!-- /suite-headline -->"
MWNET_METHODS = ("mwnet-fast", "mwnet-head")
WEIGHTING_RUNS = ("mwnet-fast", "mwnet-head", "cmwnet", "cmwnet-sl", "mwnet-sl", "mwnet-auto")
"""Methods whose runs learn a weighting net (their curves and weights are reported)."""
MWNET_FAMILY = (
    "mwnet-fast",
    "mwnet-head",
    "cmwnet",
    "cmwnet-sl",
    "mwnet-sl",
    "mwnet-auto",
    "mwnet-fast-k5",
    "mwnet-head-k5",
    "cmwnet-lt",
    "mwnet-lt",
    "mwnet-fast-retrain",
    "mwnet-fast-finetune",
)
"""What "mwnet's best" ranges over: learned weighting in any form, and the combinations
that start from a weighting run (its flagged labels, its model)."""
CLEAN_SET_METHODS = (
    "l2rw",
    "finetune",
    "mwnet-fast",
    "mwnet-head",
    "cmwnet",
    "mwnet-fast-retrain",
    "mwnet-fast-finetune",
)
"""The default grid's methods that read the clean images."""
PSEUDO_META_METHODS = ("mwnet-auto", "mwnet-sl", "cmwnet-sl")
DETECTORS = ("mwnet-fast", "mwnet-head", "cmwnet", "l2rw")


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
                setting_named(setting), next(m for m in METHODS if m.name == method)
            )
        return self._selections[key]

    def select(self, setting: str, method: str) -> list[Run]:
        return [r for r in self.runs if r.setting == setting and r.method == method]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean, std = _mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _method(name: str) -> MethodSpec:
    return next(m for m in METHODS if m.name == name)


def _title(method: str) -> str:
    return next(m.title for m in METHODS if m.name == method)


def _weight_trend(run: Run) -> str | None:
    """The trend of the learned weighting function (the first curve of a class-aware net)."""
    trends = _weight_trends(run)
    return trends[0] if trends else None


def _weight_trends(run: Run) -> list[str] | None:
    """ "decreasing", "increasing", "flat" or "non-monotone" for each learned curve (one,
    or one per class cluster) over the losses the training samples actually had (1st-99th
    percentile)."""
    wf, range_ = run.weight_function, run.loss_percentiles
    if wf is None or range_ is None:
        return None
    losses, weights = wf
    low, high = range_
    inside = (losses >= low) & (losses <= high)
    if inside.sum() < 3:
        return None
    curves = weights[:, None] if weights.ndim == 1 else weights
    return [_trend(losses[inside], curves[inside, k]) for k in range(curves.shape[1])]


def _trend(losses: np.ndarray, w: np.ndarray) -> str:
    if w.max() - w.min() < 0.05 * max(abs(w).max(), 1e-12):
        return "flat"
    tol = 1e-9 * abs(w).max()
    steps = np.diff(w)
    if (steps <= tol).mean() > 0.95:
        return "decreasing"
    if (steps >= -tol).mean() > 0.95:
        return "increasing"
    peak = int(np.argmax(w))
    rising, falling = steps[:peak], steps[peak:]
    if len(rising) and (rising >= -tol).mean() > 0.95 and (falling <= tol).mean() > 0.95:
        return f"rising to a peak at loss {losses[peak]:.2f}, decreasing above it"
    return "non-monotone"


def _short_trend(trend: str | None) -> str:
    if trend is None:
        return "n/a"
    return "peak, then decreasing" if trend.startswith("rising") else trend


def _compare(a: Sequence[float], b: Sequence[float]) -> tuple[float, str]:
    """Mean difference a - b, and whether it exceeds the seeds' spread."""
    diff = float(np.mean(a) - np.mean(b))
    spread = float(np.hypot(_mean_std(a)[1], _mean_std(b)[1]))
    if len(a) < 2 or len(b) < 2:
        return diff, "one seed, no spread to judge by"
    if abs(diff) <= spread:
        return diff, "within the seeds' spread"
    return diff, "beyond the seeds' spread"


def _paired(a: Sequence[Run], b: Sequence[Run]) -> list[float]:
    """Per-seed differences a - b of last-epoch accuracy, over the seeds both have (same
    seed: same data, split, noise and validation split)."""
    by_seed = {r.seed: r.last for r in b}
    return [r.last - by_seed[r.seed] for r in a if r.seed in by_seed]


def _main_settings(res: Results) -> list[Setting]:
    return [s for s in SETTINGS if s.group == "main" and any(r.setting == s.name for r in res.runs)]


# --- tables ---------------------------------------------------------------------------


def _method_header(methods: list[MethodSpec]) -> list[str]:
    """The first two lines of a settings x methods table."""
    return [
        "| setting | " + " | ".join(m.title for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]


def headline_table(res: Results, default: bool = True, group: str = "main") -> str:
    """Settings x methods, last-epoch test accuracy (mean ± std) at the selected values,
    best mean in bold: the default grid's methods, or (``default=False``) the extra ones
    that have runs."""
    settings = [s for s in SETTINGS if s.group == group]
    names = {r.method for r in res.runs if any(r.setting == s.name for s in settings)}
    methods = [m for m in METHODS if m.default == default and m.name in names]
    if not methods:
        return ""
    lines = _method_header(methods)
    for setting in settings:
        cells = [res.select(setting.name, m.name) for m in methods]
        if not any(cells):
            continue
        means = [np.mean([r.last for r in rs]) if rs else -np.inf for rs in cells]
        top = int(np.argmax(means))
        texts = []
        for k, rs in enumerate(cells):
            text = _fmt([r.last for r in rs], 1)
            if not rs and _all_failed(res, setting, methods[k]):
                text = "diverged"
            lost = res.diverged.get((setting.name, methods[k].name), [])
            if lost and rs:
                text += f" ({len(lost)} of {len(lost) + len(rs)} seeds diverged)"
            texts.append(f"**{text}**" if k == top and rs else text)
        lines.append(f"| {setting.title} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _all_failed(res: Results, setting: Setting, method: MethodSpec) -> bool:
    sel = res.selection(setting.name, method.name)
    return sel.complete and sel.chosen is None and bool(sel.grid)


def _best(res: Results, setting: str, names: Sequence[str]) -> str | None:
    have = {m: res.select(setting, m) for m in names}
    have = {m: rs for m, rs in have.items() if rs}
    if not have:
        return None
    return max(have, key=lambda m: np.mean([r.last for r in have[m]]))


def verdict_table(res: Results, group: str = "main") -> str:
    """Per setting: the best method, mwnet's best, and the margin between them, paired by
    seed (mean ± std of the per-seed differences)."""
    lines = [
        "| setting | best method | mwnet's best | mwnet's best - best, per seed | verdict |",
        "|---|---|---|---|---|",
    ]
    found = False
    for setting in (s for s in SETTINGS if s.group == group):
        everyone = [m.name for m in METHODS]
        best = _best(res, setting.name, everyone)
        ours = _best(res, setting.name, MWNET_FAMILY)
        if best is None or ours is None:
            continue
        found = True
        top, mine = res.select(setting.name, best), res.select(setting.name, ours)
        diffs = _paired(mine, top)
        if best == ours:
            others = [m for m in everyone if m not in MWNET_FAMILY]
            rival = _best(res, setting.name, others)
            rivals = res.select(setting.name, rival) if rival else []
            diffs = _paired(mine, rivals)
            sign = "+" if diffs and np.mean(diffs) >= 0 else ""  # negative: seeds differ
            margin = f"{sign}{_fmt(diffs, 2)} over {_title(rival)}" if rival else "n/a"
            verdict = _verdict(diffs, win=True)
        else:
            margin = _fmt(diffs, 2)
            verdict = _verdict(diffs, win=False)
        lines.append(
            f"| {setting.title} | {_title(best)}: {_fmt([r.last for r in top], 1)} | "
            f"{_title(ours)}: {_fmt([r.last for r in mine], 1)} | {margin} | {verdict} |"
        )
    return "\n".join(lines) if found else ""


def _verdict(diffs: Sequence[float], win: bool) -> str:
    if len(diffs) < 2:
        return "mwnet best (one seed)" if win else "mwnet behind (one seed)"
    mean, std = _mean_std(diffs)
    clear = abs(mean) > std
    if win:
        return "mwnet ahead, beyond the spread" if clear else "mwnet ahead, within the spread"
    return "mwnet behind, beyond the spread" if clear else "level within the spread"


def selection_table(res: Results, group: str = "main") -> str:
    """The selected values of every method in every setting, and what was searched."""
    settings = [s for s in SETTINGS if s.group == group]

    def started(setting: Setting, method: MethodSpec) -> bool:
        if not _runs_method(setting, method):
            return False
        return any(st.settled for _, st in res.selection(setting.name, method.name).grid)

    methods = [m for m in METHODS if any(started(s, m) for s in settings)]
    if not methods:
        return ""
    lines = _method_header(methods)
    for setting in settings:
        texts = []
        for method in methods:
            if not started(setting, method):
                texts.append("")
                continue
            sel = res.selection(setting.name, method.name)
            texts.append(_selection_text(sel))
        if any(texts):
            lines.append(f"| {setting.title} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _runs_method(setting: Setting, method: MethodSpec) -> bool:
    return setting.methods is None or method.name in setting.methods


def _selection_text(sel: Selection) -> str:
    if not sel.complete:
        return "pending"
    failed = sum(s.diverged for _, s in sel.grid)
    if sel.chosen is None:
        return "every candidate diverged" if sel.grid else "n/a"
    values = ", ".join(_value_text(label, v) for label, v in sel.chosen.values) or "defaults"
    return values + (f" ({failed} diverged)" if failed else "")


def _value_text(label: str, value: float) -> str:
    short = {
        "lr": "lr",
        "weighting-net lr": "net lr",
        "focal gamma": "gamma",
        "class-balanced beta": "beta",
        "fine-tune lr": "ft lr",
    }
    return f"{short.get(label, label)} {value:g}"


def grid_table(res: Results, setting: Setting) -> str:
    """The first seed's grid of every method in a setting: each candidate's last-epoch
    validation accuracy (the selected one in bold), as the selection saw it, and the margin
    rule's decision."""
    lines = []
    for method in methods_of(setting, METHOD_NAMES):
        sel = res.selection(setting.name, method.name)
        if not sel.grid or not any(s.settled for _, s in sel.grid):
            continue
        parts = []
        for candidate, state in sel.grid:
            text = _state_text(state)
            mark = sel.chosen is not None and candidate.tag == sel.chosen.tag
            parts.append(f"{candidate.tag}: {'**' + text + '**' if mark else text}")
        lines.append(f"| {method.title} | {'; '.join(parts)} | {_margin_text(sel)} |")
    if not lines:
        return ""
    return "\n".join(
        [
            "| method | validation accuracy % per candidate (seed 0) | best - default "
            "(threshold): selection |",
            "|---|---|---|",
            *lines,
        ]
    )


def _margin_text(sel: Selection) -> str:
    """The margin rule's numbers: the best candidate's validation accuracy minus the
    default's, the sampling error it had to exceed, and what was selected."""
    margin = sel.margin
    if margin is None:
        return "pending" if not sel.complete else "n/a"
    tags = [c.tag for c, _ in sel.grid]
    if margin.best == margin.default:
        return f"+0.0 (threshold {margin.threshold:.1f}): {tags[margin.default]}, the default"
    if margin.switched:
        return f"{margin.margin:+.1f} > {margin.threshold:.1f}: {tags[margin.best]} wins"
    return f"{margin.margin:+.1f} <= {margin.threshold:.1f}: keeps {tags[margin.default]}"


def _state_text(state: State) -> str:
    if state.failed:
        return "diverged"
    if not state.finished:
        return "pending"
    if state.val_acc is None:
        return "n/a"
    return f"{state.val_acc:.1f} (at chance)" if state.at_chance else f"{state.val_acc:.1f}"


def setting_table(res: Results, setting: Setting) -> str:
    lines = [
        "| method | selected | best-epoch acc % | last-epoch acc % | test acc at best val epoch"
        " | last - best | wall time / run |"
        + (" weight clean / corrupted | AUROC (corrupted) |" if setting.noisy else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if setting.noisy else ""),
    ]
    for method in METHODS:
        rs = res.select(setting.name, method.name)
        if not rs:
            continue
        drops = [r.last - r.best for r in rs]
        wall = np.mean([r.summary["wall_time"] for r in rs])
        at_val = [r.summary.get("test_acc_at_best_val") for r in rs]
        at_val = [v for v in at_val if v is not None]
        chosen = res.selection(setting.name, method.name).chosen
        values = ", ".join(_value_text(lb, v) for lb, v in chosen.values) if chosen else ""
        row = (
            f"| {method.title} | {values or 'defaults'} | {_fmt([r.best for r in rs])} | "
            f"{_fmt([r.last for r in rs])} | {_fmt(at_val)} | {np.mean(drops):+.2f} | "
            f"{wall:.0f} s |"
        )
        if setting.noisy:
            clean = [r.metrics[-1].get("mean_weight_clean") for r in rs]
            bad = [r.metrics[-1].get("mean_weight_corrupted") for r in rs]
            if all(v is not None for v in clean + bad):
                row += f" {np.mean(clean):.3f} / {np.mean(bad):.3f} |"
            else:
                row += " n/a |"
            aurocs = [r.auroc for r in rs if r.auroc is not None]
            row += f" {_fmt(aurocs, 3)} |" if aurocs else " n/a |"
        lines.append(row)
    return "\n".join(lines)


def seeds_table(res: Results, groups: Sequence[str] = ("main", "small")) -> str:
    """Did the weighting work, seed by seed: the learned curve's direction, the AUROC of
    the final weights and of ``mwnet issues``' score for the corrupted labels."""
    lines = [
        "| setting | method | seed | last-epoch acc % | learned curve | AUROC, weights |"
        " AUROC, mwnet issues |",
        "|---|---|---|---|---|---|---|",
    ]
    found = False
    for setting in (s for s in SETTINGS if s.group in groups):
        for method in ("mwnet-fast", "mwnet-head", "cmwnet"):
            for run in sorted(res.select(setting.name, method), key=lambda r: r.seed):
                found = True
                a, b = run.auroc, run.issues_auroc if setting.noisy else None
                lines.append(
                    f"| {setting.title} | {_title(method)} | {run.seed} | {run.last:.1f} | "
                    f"{_short_trend(_weight_trend(run))} | "
                    f"{'n/a' if a is None else f'{a:.3f}'} | {'n/a' if b is None else f'{b:.3f}'} |"
                )
    return "\n".join(lines) if found else ""


def clean_size_table(res: Results) -> str:
    """Last-epoch accuracy against the clean set's size, per noisy setting and method;
    CE and CMW-Net-SL, which read no clean image, from the main setting for reference."""
    axes = [s for s in SETTINGS if s.group == "clean-size"]
    bases = [setting_named(n) for n in dict.fromkeys(s.varies for s in axes if s.varies)]
    if not any(res.select(s.name, m) for s in axes for m in CLEAN_SIZE_METHODS):
        return ""
    lines = [
        "| setting | method | 100 clean | 300 clean | 1,000 clean |",
        "|---|---|---|---|---|",
    ]
    for base in bases:
        row_settings = _clean_size_row(base)
        for method in CLEAN_SIZE_METHODS:
            cells = [_fmt([r.last for r in res.select(s, method)], 1) for s in row_settings]
            lines.append(f"| {base.title} | {_title(method)} | " + " | ".join(cells) + " |")
        for method in ("ce", "cmwnet-sl"):
            rs = res.select(base.name, method)
            if rs:
                text = _fmt([r.last for r in rs], 1)
                lines.append(
                    f"| {base.title} | {_title(method)} (reads no clean image) | {text} | "
                    f"{text} | {text} |"
                )
    return "\n".join(lines)


def _clean_size_row(base: Setting) -> list[str]:
    """The settings of one clean-set size axis, smallest clean set first."""
    axis = sorted(
        (s for s in SETTINGS if s.group == "clean-size" and s.varies == base.name),
        key=lambda s: s.clean_per_class or 0,
    )
    return [s.name for s in axis] + [base.name]


def full_train_table(res: Results) -> str:
    settings = [s for s in SETTINGS if s.group == "full-train"]
    methods = [m for m in METHODS if any(res.select(s.name, m.name) for s in settings)]
    if not methods:
        return ""
    lines = [
        "| setting | "
        + " | ".join(m.title for m in methods)
        + " | seeds | wall time, MW-Net run (x CE's) |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    for setting in settings:
        cells = [res.select(setting.name, m.name) for m in methods]
        if not any(cells):
            continue
        means = [np.mean([r.last for r in rs]) if rs else -np.inf for rs in cells]
        top = int(np.argmax(means))
        texts = [
            (f"**{_fmt([r.last for r in rs], 1)}**" if k == top else _fmt([r.last for r in rs], 1))
            for k, rs in enumerate(cells)
        ]
        seeds = sorted({r.seed for rs in cells for r in rs})
        wall = _wall_text(res.select(setting.name, "mwnet-fast"), res.select(setting.name, "ce"))
        lines.append(
            f"| {setting.title} | "
            + " | ".join(texts)
            + f" | {', '.join(map(str, seeds))} | {wall} |"
        )
    return "\n".join(lines)


def _wall_text(mwnet: Sequence[Run], ce: Sequence[Run]) -> str:
    """A MW-Net run's mean wall time, and its ratio to CE's on the same seeds."""
    if not mwnet:
        return "n/a"
    minutes = np.mean([r.summary["wall_time"] for r in mwnet]) / 60
    ce_by_seed = {r.seed: r.summary["wall_time"] for r in ce}
    ratios = [r.summary["wall_time"] / ce_by_seed[r.seed] for r in mwnet if r.seed in ce_by_seed]
    return f"{minutes:.0f} min" + (f" ({np.mean(ratios):.1f}x)" if ratios else "")


def cost_table(res: Results, setting: str = "flip2-40") -> str:
    """Accuracy against training time on one setting, time as a multiple of CE's."""
    ce = res.select(setting, "ce")
    if not ce:
        return ""
    ce_time = float(np.mean([r.summary["wall_time"] for r in ce]))
    lines = [
        "| method | last-epoch acc % | wall time / run | x CE |",
        "|---|---|---|---|",
    ]
    for method in METHODS:
        rs = res.select(setting, method.name)
        if not rs:
            continue
        wall = float(np.mean([r.summary["wall_time"] for r in rs]))
        ratio = f"{wall / ce_time:.2f}" if ce_time > 0 else "n/a"
        lines.append(f"| {method.title} | {_fmt([r.last for r in rs])} | {wall:.0f} s | {ratio} |")
    return "\n".join(lines)


def class_aware_table(res: Results) -> str:
    """CMW-Net against MW-Net (fast) and class-balanced loss, with its class clusters and
    the direction of each cluster's learned curve (seed 0)."""
    lines = [
        "| setting | CMW-Net - MW-Net (fast) | CMW-Net - class-balanced | classes per cluster"
        " (largest first) | curve per cluster, seed 0 |",
        "|---|---|---|---|---|",
    ]
    found = False
    for setting in _main_settings(res):
        cm = res.select(setting.name, "cmwnet")
        if not cm:
            continue
        found = True
        diffs = []
        for other in ("mwnet-fast", "class-balanced"):
            rs = res.select(setting.name, other)
            if rs:
                diff, verdict = _compare([r.last for r in cm], [r.last for r in rs])
                diffs.append(f"{diff:+.2f} ({verdict})")
            else:
                diffs.append("n/a")
        clusters = cm[0].summary.get("class_clusters") or []
        sizes = np.bincount(clusters).tolist() if clusters else []
        trends = _weight_trends(cm[0]) or []
        lines.append(
            f"| {setting.title} | {diffs[0]} | {diffs[1]} | "
            f"{' / '.join(map(str, sizes)) or 'n/a'} | {'; '.join(trends) or 'n/a'} |"
        )
    return "\n".join(lines) if found else ""


def no_clean_table(res: Results) -> str:
    """The methods that never read a clean example, beside the best clean-set method."""
    if not any(r.method in PSEUDO_META_METHODS for r in res.runs):
        return ""
    methods = [m for m in NO_CLEAN_METHODS if any(r.method == m for r in res.runs)]
    lines = [
        "| setting | "
        + " | ".join(_title(m) for m in methods)
        + " | best with the clean set | pseudo-meta labels right (last epoch) |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    for setting in _main_settings(res):
        cells = [res.select(setting.name, m) for m in methods]
        if not any(cells):
            continue
        means = [np.mean([r.last for r in rs]) if rs else -np.inf for rs in cells]
        top = int(np.argmax(means))
        texts = [
            (f"**{_fmt([r.last for r in rs], 1)}**" if k == top else _fmt([r.last for r in rs], 1))
            for k, rs in enumerate(cells)
        ]
        name = _best(res, setting.name, CLEAN_SET_METHODS)
        best = ""
        if name:
            best = f"{_title(name)}: {_fmt([r.last for r in res.select(setting.name, name)], 1)}"
        precision = [
            r.metrics[-1].get("meta_precision")
            for m in ("cmwnet-sl", "mwnet-sl")
            for r in res.select(setting.name, m)
        ]
        precision = [p for p in precision if p is not None]
        right = f"{100 * np.mean(precision):.1f} %" if precision else "n/a"
        lines.append(f"| {setting.title} | " + " | ".join(texts) + f" | {best} | {right} |")
    return "\n".join(lines)


def computed_findings(res: Results) -> list[str]:
    out = []
    for setting in (s for s in SETTINGS if s.group in ("main", "small")):
        ce = res.select(setting.name, "ce")
        fast = res.select(setting.name, "mwnet-fast")
        if not ce:
            continue
        parts = [f"**{setting.title}**:"]
        drop = np.mean([r.last - r.best for r in ce])
        parts.append(f"CE ends {abs(drop):.2f} points {'below' if drop < 0 else 'above'} its best")
        winner = _best(res, setting.name, [m.name for m in METHODS])
        if winner:
            mean = np.mean([r.last for r in res.select(setting.name, winner)])
            parts.append(f"top last-epoch accuracy: {_title(winner)} ({mean:.2f} %)")
        if fast:
            diff, verdict = _compare([r.last for r in fast], [r.last for r in ce])
            parts.append(f"MW-Net (fast) minus CE, last epoch: {diff:+.2f} points ({verdict})")
            trends = [_short_trend(_weight_trend(r)) for r in sorted(fast, key=lambda r: r.seed)]
            parts.append(f"learned curve per seed: {', '.join(trends)}")
            aurocs = [r.auroc for r in fast if r.auroc is not None]
            if aurocs:
                parts.append(f"AUROC of its weights for corrupted labels {_fmt(aurocs, 3)}")
        out.append("- " + parts[0] + " " + "; ".join(parts[1:]) + ".")
    return out


# --- plots ----------------------------------------------------------------------------


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def _settings_grid(n: int) -> tuple[Any, list[Any]]:
    """A figure with one panel per setting, four to a row; the panels, in order."""
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = _figure(rows, cols, (13, 3.1 * rows))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _usual_losses(run: Run, losses: np.ndarray) -> np.ndarray:
    """Which grid points of a weighting function lie below the run's 99th-percentile
    training loss: the range its samples actually had."""
    range_ = run.loss_percentiles
    high = range_[1] if range_ is not None else float(losses.max())
    return losses <= max(high, losses.min() + 1e-6)


def _curve_settings(res: Results, method: str) -> list[Setting]:
    return [
        s
        for s in SETTINGS
        if s.group in ("main", "small")
        and any(r.weight_function is not None for r in res.select(s.name, method))
    ]


def plot_weighting_functions(res: Results, path: Path) -> Path | None:
    """MW-Net (fast)'s learned curve of every seed, per setting: the direction's stability
    over seeds is visible at a glance."""
    shown = _curve_settings(res, "mwnet-fast")
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        for run in sorted(res.select(setting.name, "mwnet-fast"), key=lambda r: r.seed):
            if run.weight_function is None:
                continue
            losses, weights = run.weight_function
            keep = _usual_losses(run, losses)
            scale = max(float(weights[keep].max()), 1e-12)
            ax.plot(losses[keep], weights[keep] / scale, label=f"seed {run.seed}")
        ax.set_title(setting.title, fontsize=8)
        ax.set_xlabel("training loss")
        ax.set_ylabel("weight / max weight")
        ax.legend(fontsize=6)
    fig.suptitle(
        "MW-Net (fast): learned weighting function of each seed, up to the 99th percentile of "
        "losses"
    )
    return _save(fig, path)


def plot_class_aware_curves(res: Results, path: Path) -> Path | None:
    """CMW-Net's learned curve of each class cluster, per setting (seed 0)."""
    shown = [s for s in _curve_settings(res, "cmwnet") if s.group == "main"]
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        run = min(
            (r for r in res.select(setting.name, "cmwnet") if r.weight_function is not None),
            key=lambda r: r.seed,
        )
        losses, weights = run.weight_function
        curves = weights[:, None] if weights.ndim == 1 else weights
        keep = _usual_losses(run, losses)
        sizes = np.bincount(run.summary.get("class_clusters") or [0] * curves.shape[1])
        for k in range(curves.shape[1]):
            ax.plot(losses[keep], curves[keep, k], label=f"cluster {k} ({sizes[k]} classes)")
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("training loss")
        ax.set_ylabel("weight")
        ax.legend(fontsize=7)
    fig.suptitle("CMW-Net: learned curve per class cluster (0 = largest classes; seed 0)")
    return _save(fig, path)


def plot_meta_precision(res: Results, path: Path) -> Path | None:
    """How clean the pseudo-meta set is, epoch by epoch (seed 0, noisy settings)."""
    shown = [
        s
        for s in _main_settings(res)
        if s.noisy and any(res.select(s.name, m) for m in PSEUDO_META_METHODS)
    ]
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        for method in PSEUDO_META_METHODS:
            rs = res.select(setting.name, method)
            if not rs:
                continue
            points = [
                (m["epoch"], 100 * m["meta_precision"])
                for m in min(rs, key=lambda r: r.seed).metrics
                if m.get("meta_precision") is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=_title(method))
        first = min((r for r in res.runs if r.setting == setting.name), key=lambda r: r.seed)
        realized = first.summary["realized_noise_rate"]
        if realized is not None:  # None: a user's own labels, their quality unknown
            rate = 100 * (1 - realized)
            ax.axhline(rate, color="grey", linestyle=":", label="labels right in the data")
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("pseudo-meta labels right %")
        ax.legend(fontsize=7)
    fig.suptitle("Label precision of the pseudo-meta set (no clean data; seed 0)")
    return _save(fig, path)


def plot_weight_histograms(res: Results, path: Path) -> Path | None:
    shown = [
        s
        for s in _main_settings(res)
        if s.noisy and _histogram_run(res.select(s.name, "mwnet-fast")) is not None
    ]
    if not shown:
        return None
    fig, axes = _figure(1, len(shown), (3.2 * len(shown), 3))
    for ax, setting in zip(axes.flat, shown, strict=True):
        run = _histogram_run(res.select(setting.name, "mwnet-fast"))
        hist = run.result.derived["weight_histogram"]
        edges = np.asarray(hist["edges"], dtype=np.float64)
        for name, color in (("clean", "tab:blue"), ("corrupted", "tab:red")):
            counts = np.asarray(hist[name], dtype=np.float64)
            if counts.sum() > 0:
                ax.hist(
                    edges[:-1],
                    bins=edges,
                    weights=counts,
                    alpha=0.6,
                    density=True,
                    label=name,
                    color=color,
                )
        ax.set_title(f"{setting.title}\nAUROC {run.auroc:.3f}" if run.auroc else setting.title)
        ax.set_xlabel("final weight")
        ax.legend(fontsize=7)
    fig.suptitle("MW-Net (fast) weights of clean vs corrupted training samples (seed 0)")
    return _save(fig, path)


def _histogram_run(runs: Sequence[Run]) -> Run | None:
    """The first seed's run, where it kept a histogram of its final weights."""
    if not runs:
        return None
    run = min(runs, key=lambda r: r.seed)
    return run if "weight_histogram" in run.result.derived else None


def plot_auroc(res: Results, path: Path) -> Path | None:
    """Per setting and method, the AUROC of every seed as a dot: of the final weights, and
    of ``mwnet issues``' score (MW-Net (fast))."""
    shown = [s for s in SETTINGS if s.noisy and s.group in ("main", "small")]
    shown = [s for s in shown if any(res.select(s.name, m) for m in DETECTORS)]
    if not shown:
        return None
    series = [(m, "weights") for m in DETECTORS] + [("mwnet-fast", "issues")]
    fig, axes = _figure(1, 1, (9, 3.6))
    ax = axes[0, 0]
    width = 0.8 / len(series)
    x = np.arange(len(shown))
    for k, (method, kind) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        label = _title(method) + (", mwnet issues" if kind == "issues" else ", weights")
        xs, ys = [], []
        for i, setting in enumerate(shown):
            for run in res.select(setting.name, method):
                value = run.issues_auroc if kind == "issues" else run.auroc
                if value is not None:
                    xs.append(x[i] + offset)
                    ys.append(value)
        if ys:
            ax.plot(xs, ys, "o", markersize=3.5, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [s.name for s in shown], fontsize=7)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("AUROC for corrupted labels")
    ax.legend(fontsize=6, loc="lower left")
    ax.set_title("Detecting corrupted labels, one dot per seed (0.5 = chance)", fontsize=9)
    return _save(fig, path)


def plot_clean_size(res: Results, path: Path) -> Path | None:
    """Last-epoch accuracy against the clean set's size (mean and each seed)."""
    bases = [
        setting_named(n)
        for n in dict.fromkeys(s.varies for s in SETTINGS if s.group == "clean-size")
    ]
    bases = [b for b in bases if any(res.select(s, "finetune") for s in _clean_size_row(b))]
    if not bases:
        return None
    fig, axes = _figure(1, len(bases), (5.2 * len(bases), 3.6))
    for ax, base in zip(axes.flat, bases, strict=True):
        row = _clean_size_row(base)
        sizes = [10 * (setting_named(s).clean_per_class or 100) for s in row]
        for method in CLEAN_SIZE_METHODS:
            points = [
                (n, [r.last for r in res.select(s, method)])
                for n, s in zip(sizes, row, strict=True)
            ]
            points = [(n, v) for n, v in points if v]
            if not points:
                continue
            (line,) = ax.plot(
                [n for n, _ in points],
                [np.mean(v) for _, v in points],
                marker="o",
                label=_title(method),
            )
            for n, v in points:
                ax.plot([n] * len(v), v, ".", color=line.get_color(), alpha=0.4)
        for method, style in (("ce", ":"), ("cmwnet-sl", "--")):
            rs = res.select(base.name, method)
            if rs:
                ax.axhline(
                    np.mean([r.last for r in rs]),
                    color="grey",
                    linestyle=style,
                    label=f"{_title(method)} (no clean image)",
                )
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.set_xlabel("clean images")
        ax.set_ylabel("last-epoch test accuracy %")
        ax.set_title(base.title, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("How much clean data is needed: accuracy against the clean set's size")
    return _save(fig, path)


def plot_accuracy_vs_time(res: Results, path: Path) -> Path | None:
    shown = [s for s in SETTINGS if s.name in ("flip2-40", "uniform-60", "lt-100-flip2-20")]
    shown = [s for s in shown if res.select(s.name, "ce")]
    if not shown:
        return None
    fig, axes = _figure(1, len(shown), (4.2 * len(shown), 3.2))
    for ax, setting in zip(axes.flat, shown, strict=True):
        for method in ("ce", "finetune", *MWNET_METHODS, "cmwnet", "l2rw"):
            rs = res.select(setting.name, method)
            if not rs:
                continue
            run = min(rs, key=lambda r: r.seed)
            times = [m["wall_time"] for m in run.metrics]
            accs = [m["test_acc"] for m in run.metrics]
            ax.plot(times, accs, label=_title(method))
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("wall-clock seconds (one core)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy against training time (seed 0, selected values)")
    return _save(fig, path)


# --- the document ---------------------------------------------------------------------


def _kept_reading(previous: Path) -> str:
    if previous.is_file():
        text = previous.read_text(encoding="utf-8")
        found = re.search(re.escape(READING_START) + r"(.*?)" + re.escape(READING_END), text, re.S)
        if found:
            return found.group(1).strip("\n")
    return "_No reading written yet._"


def _environment(res: Results) -> str:
    """The software and machine(s) of the results (this process's where there are none)."""
    found = [r for _, r in res.planner.results.values()] or [None]
    texts = []
    for result in found:
        versions = these_versions() if result is None else result.versions
        machine = this_machine() if result is None else result.machine
        texts.append(
            f"mwnet {versions.get('mwnet')}, torch {versions.get('torch')}, "
            f"numpy {versions.get('numpy')}, Python {versions.get('python')}, "
            f"{machine.get('platform')}, {machine.get('cpu')}"
        )
    return "; ".join(sorted(set(texts)))


def _machines(res: Results) -> str:
    """Which machine produced the cells: one line for one device, else per setting."""
    by_setting: dict[str, dict[str, int]] = {}
    for cell, result in res.planner.results.values():
        devices = by_setting.setdefault(cell.setting.name, {})
        devices[result.device] = devices.get(result.device, 0) + 1
    every = {d for devices in by_setting.values() for d in devices}
    if not every:
        return "- Machines: no cells yet."
    total = sum(n for devices in by_setting.values() for n in devices.values())
    if len(every) == 1:
        return f"- Machine: all {total} cells ran on {next(iter(every))}."
    parts = []
    for setting in SETTINGS:
        devices = by_setting.get(setting.name)
        if devices:
            listed = ", ".join(f"{d} {n}" for d, n in sorted(devices.items()))
            parts.append(f"{setting.title}: {listed}")
    head = "- Machines, cells per device and setting: "
    return head + "; ".join(parts) + "."


def _stale_section(res: Results) -> list[str]:
    stale = res.stale
    if not stale:
        return []
    return [
        "## Stale ledger records",
        "",
        "These records were made under another config than their cell's now (the first "
        "changed key is named); they are in no table, and the suite trains their cells again.",
        "",
        *(f"- `{line}`" for line in stale),
        "",
    ]


def write_report(
    out: Path,
    docs: Path,
    command: str,
    scale: Any,
    suite_info: dict[str, Any],
    readme: Path | None = None,
    ledger: Path | None = None,
) -> list[Path]:
    """RESULTS.md and plots in ``docs`` from the runs under ``out``, or from the records of
    ``ledger`` alone where one is given; the README's headline block (between the
    suite-headline markers) when ``readme`` is given."""
    res = Results(out, scale, ledger)
    figures = docs / "results"
    figures.mkdir(parents=True, exist_ok=True)
    written = [
        p
        for p in (
            plot_weighting_functions(res, figures / "weighting_functions.png"),
            plot_class_aware_curves(res, figures / "class_aware_curves.png"),
            plot_clean_size(res, figures / "clean_set_size.png"),
            plot_meta_precision(res, figures / "meta_precision.png"),
            plot_weight_histograms(res, figures / "weight_histograms.png"),
            plot_auroc(res, figures / "auroc.png"),
            plot_accuracy_vs_time(res, figures / "accuracy_vs_time.png"),
        )
        if p is not None
    ]
    results = docs / "RESULTS.md"
    text = render(res, command, scale, suite_info, _kept_reading(results), written, docs)
    with atomic_write(results) as f:
        f.write(text)
    written.append(results)
    if readme is not None and readme.is_file():
        update_readme(readme, headline_table(res))
        written.append(readme)
    return written


def _meta_sizes(res: Results) -> str:
    """ "1,000 (noisy and clean settings) and 100 (long-tailed)", from the main settings."""
    by_kind: dict[str, set[int]] = {}
    for run in res.runs:
        setting = setting_named(run.setting)
        if run.method in PSEUDO_META_METHODS or setting.group != "main":
            continue
        kind = "long-tailed" if setting.imbalanced else "noisy and clean"
        by_kind.setdefault(kind, set()).add(int(run.summary["meta_samples"]))
    parts = [
        f"{'/'.join(f'{n:,}' for n in sorted(sizes))} ({kind} settings)"
        for kind, sizes in sorted(by_kind.items(), reverse=True)
    ]
    return " and ".join(parts) or "no"


def _weight_lr_text(scale: Scale) -> str:
    """How the weighting net's learning rate was chosen at this scale: searched over its
    optimizer's values, or the authors' value alone."""
    names = {"adam": "Adam", "sgd": "SGD"}
    values = "; ".join(
        f"{names[name]} " + ", ".join(f"{v:g}" for v in lrs[: scale.weight_lr_values])
        for name, lrs in WEIGHT_LRS.items()
    )
    how = "searched" if scale.weight_lr_values > 1 else "the authors', not searched"
    return f"its learning rate is {how} ({values})"


def _method_line(method: MethodSpec, scale: Scale) -> str:
    extra = "" if method.default else " (*extra*)"
    overrides = (*method.overrides, *(method.weight_optimizer or ()))
    searched: list[str] = []
    fixed: list[str] = []
    if method.tune_lr:
        searched.append("lr " + ", ".join(f"{v:g}" for v in scale.lrs))
    if method.knob is not None:
        values = candidates(SETTINGS[3], method, scale)  # a noisy setting's values
        knob_vals = dict.fromkeys(v for c in values for lb, v in c.values if lb != "lr")
        text = f"{method.knob.label} " + ", ".join(f"{v:g}" for v in knob_vals)
        (searched if len(knob_vals) > 1 else fixed).append(text)
    after = f"; continues the selected {_title(method.after)} run" if method.after else ""
    return (
        f"  - {method.title}{extra}: `{' '.join(overrides)}`; searched: "
        f"{'; '.join(searched) or 'nothing'}{'; fixed: ' + ', '.join(fixed) if fixed else ''}"
        f"{after}"
    )


def _timing(res: Results, suite_info: dict[str, Any]) -> str:
    default = {m.name for m in METHODS if m.default}
    main = {s.name for s in SETTINGS if s.in_default}
    summed = 0.0
    n = 0
    for cell, result in res.planner.results.values():
        if cell.setting.name in main and cell.method.name in default and result.finished:
            summed += float(result.summary["wall_time"])
            n += 1
    elapsed = suite_info.get("elapsed_seconds")
    load = (suite_info.get("load") or {}).get("elapsed_seconds")
    text = (
        f"- The default grid: {n} finished runs, {summed / 3600:.2f} h of training summed over runs"
    )
    if elapsed:
        text += (
            f"; the suite took {elapsed / 3600:.2f} h of wall-clock time with "
            f"{suite_info.get('jobs')} parallel runs"
        )
        if load:
            text += f", at a mean 1-minute load average of {load['mean']:.1f} on 2 cores"
    extra = suite_info.get("extra_elapsed_seconds")
    if extra:
        text += f"; extra runs took {extra / 3600:.2f} h more"
    full = suite_info.get("full_train_elapsed_seconds")
    if full:
        text += f"; the full-training-set regime took {full / 3600:.2f} h more"
    return text + ". Wall time per run counts training and per-epoch evaluation, not start-up."


def render(
    res: Results,
    command: str,
    scale: Any,
    suite_info: dict[str, Any],
    reading: str,
    figures: Sequence[Path],
    docs: Path,
) -> str:
    has_extra = any(not m.default and res.select(s.name, m.name) for s in SETTINGS for m in METHODS)
    small = next(s for s in SETTINGS if s.group == "small")
    lines = [
        "# Results: when does learned weighting help? (Fashion-MNIST)",
        "",
        "Generated by `" + command + "`; do not edit by hand except between the reading "
        "markers. All numbers are test accuracy (%) on the 10,000 Fashion-MNIST test images,"
        " mean ± sample std over seeds, of each method at the hyperparameters selected on a "
        "validation split of the noisy training data (never on the test set); *last* is the "
        "final epoch, the headline's number.",
        "",
        "## Setup",
        "",
        f"- Scale `{scale.name}`: a 784-{scale.hidden}-10 MLP, {scale.train_samples:,} "
        f"training images ({scale.subset:,} in a seeded subset taken after the meta split and "
        f"the long-tail subsampling, less the validation split), {scale.epochs} epochs of SGD "
        f"(momentum 0.9, weight decay 5e-4, lr x0.1 at epochs "
        f"{', '.join(map(str, scale.milestones))}), batch 100, no augmentation, one CPU thread "
        "per run.",
        f"- Validation split (`data.val_size={scale.val_size}`): {scale.val_size:,} of those "
        "images held out *after* the labels are corrupted, so their labels are as noisy as the "
        "training labels; drawn from the seed alone, the same samples for every method; never "
        "trained on.",
        "- Model selection: each method's learning rate, and its one main hyperparameter "
        "where it has one, from the grid below; every candidate trains on the first seed; the "
        "first candidate of the grid (the larger lr, then the default value) is kept unless "
        "another beats it on last-epoch validation accuracy by more than the split's "
        "sampling error, the standard error of the difference of two accuracies on the same "
        "n images, sqrt(p1(1-p1)/n + p2(1-p2)/n) (a near-tie of a few samples would otherwise "
        "flip between machines; each setting's grid table gives the margin and the "
        "threshold); only the selected candidate trains on the other seeds. A run that stops "
        "on a non-finite loss is never selected. The "
        "clean-set-size settings search their own grids; the full-training-set MLP takes "
        "the 12,000-image setting's selection, the small CNN its preset's values.",
        f"- Meta set: {_meta_sizes(res)} clean images carved from the training set before "
        "anything else (the paper's sizes: 1,000 for label noise, 10 per class for class "
        "imbalance); the methods that use clean data (L2RW, fine-tune, MW-Net, CMW-Net and "
        "the combinations) use this set, the others never see it (the no-clean-data runs "
        "carve it too, so that they train on the same images, and never read it).",
        f"- Seeds {', '.join(map(str, scale.noisy_seeds))} for the main and clean-set "
        f"settings (clean labels: {', '.join(map(str, scale.clean_seeds))}), "
        f"{', '.join(map(str, seeds_of(small, scale)))} for the small-data setting; the seed "
        "sets the split, the corruption, the validation split and the training.",
        "- Weighting-net optimizer as in the authors' scripts: Adam (weight decay 1e-4) "
        "wherever labels are noisy or clean, SGD (momentum 0.9, Nesterov, weight decay 5e-4) "
        f"for pure class imbalance; {_weight_lr_text(scale)}.",
        "- Methods (overrides on top of the shared ones; the ones marked *extra* are not "
        "part of the default grid and ran with `--methods`):",
        *[
            _method_line(m, scale)
            for m in METHODS
            if m.default or any(r.method == m.name for r in res.runs)
        ],
        _timing(res, suite_info),
        f"- Environment: {_environment(res)}.",
        _machines(res),
        "",
        "## Headline: last-epoch test accuracy at the selected hyperparameters",
        "",
        headline_table(res),
        "",
        *(
            [
                "Extra runs (same data, splits and seeds; not in the default grid):",
                "",
                headline_table(res, default=False),
                "",
            ]
            if has_extra
            else []
        ),
        "### Best method and mwnet's best, per setting",
        "",
        "mwnet's best is the best of learned weighting in any form (MW-Net, CMW-Net, the "
        "no-clean-data variants) and the combinations that start from a weighting run. The "
        "margin is paired by seed (same data, noise and splits): mean ± std of the per-seed "
        "differences; *beyond the spread* means the mean exceeds one std.",
        "",
        verdict_table(res),
        "",
        "### Selected hyperparameters",
        "",
        selection_table(res),
        "",
        *_stale_section(res),
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
    ]
    lines += _axis_sections(res, scale)
    lines += [
        "## Did the weighting work? Seed by seed",
        "",
        "Per seed: the learned curve's direction over the losses the training samples had "
        "(1st-99th percentile), the AUROC of a low final weight as a detector of a corrupted "
        "label, and the AUROC of `mwnet issues`' label-quality score computed from the same "
        "run (0.5 = chance; below 0.5 = ranks corrupted labels as cleaner than clean ones).",
        "",
        seeds_table(res),
        "",
        "## Computed findings",
        "",
        *computed_findings(res),
        "",
    ]
    lines += _group_sections(res, scale)
    lines += [
        "## Per setting",
        "",
        "Each method at its selected values (*selected*); *test acc at best val epoch* is "
        "what early stopping on the validation split would give. Below each table, the first "
        "seed's grid: the validation accuracy of every candidate, the selected one in bold.",
        "",
    ]
    for setting in SETTINGS:
        rs = [r for r in res.runs if r.setting == setting.name]
        # the data as the setting makes it (a retraining drops the flagged samples)
        rs = [r for r in rs if _method(r.method).stage is None] or rs
        if not rs:
            continue
        given = [r.summary["realized_noise_rate"] for r in rs]
        rates = sorted({round(v * 100, 2) for v in given if v is not None})
        samples = sorted({r.summary["train_samples"] for r in rs})
        metas = sorted({r.summary["meta_samples"] for r in rs if r.summary["meta_samples"]})
        lines += [
            f"### {setting.title}",
            "",
            f"Realised noise rate: {', '.join(f'{v:.2f} %' for v in rates) or 'unknown'} "
            "(per seed); "
            f"training images: {', '.join(f'{n:,}' for n in samples)}; clean images: "
            f"{', '.join(f'{n:,}' for n in metas) or 'none'}; "
            f"overrides: `{' '.join(setting.overrides)}`.",
            "",
            setting_table(res, setting),
            "",
        ]
        grid = grid_table(res, setting)
        if grid:
            lines += [grid, ""]
    if figures:
        lines += ["## Plots", ""]
        for fig in figures:
            lines += [f"![{fig.stem}]({fig.relative_to(docs).as_posix()})", ""]
    return "\n".join(lines)


def _axis_sections(res: Results, scale: Scale) -> list[str]:
    lines: list[str] = []
    size = clean_size_table(res)
    if size:
        lines += [
            "## How much clean data is needed",
            "",
            "Flip2 40 % and uniform 60 % with 10, 30 and 100 clean images per class (100, 300, "
            "1,000 in all; 1,000 is the main setting; 300 runs on request, `--settings`); "
            "every method keeps the values selected with 1,000 clean images. CE and "
            "CMW-Net-SL read no clean image: their main-setting numbers are repeated as "
            "references.",
            "",
            size,
            "",
            *(["![clean_set_size](results/clean_set_size.png)", ""]),
        ]
    small = next(s for s in SETTINGS if s.group == "small")
    small_table = headline_table(res, group="small")
    if small_table:
        lines += [
            f"## Small data: {small.title}",
            "",
            f"A new user's first try: {', '.join(scale.small_overrides)} (a validation split "
            "as small as the data). Seeds "
            f"{', '.join(map(str, seeds_of(small, scale)))}; per-seed curves and AUROCs are in "
            "the seed-by-seed table below.",
            "",
            small_table,
            "",
            verdict_table(res, group="small"),
            "",
        ]
    full = full_train_table(res)
    if full:
        lines += [
            "## The full training set (closer to the paper's regime)",
            "",
            "All 60,000 training images but the 1,000 clean ones (1.7 % of the data, the "
            "paper's CIFAR-10 ratio is 2 %) and the 1,000-image validation split; run with "
            "`mwnet suite --settings "
            + ",".join(s.name for s in SETTINGS if s.group == "full-train")
            + "` (not part of the default grid: see its wall times). The MLP takes the "
            "12,000-image setting's selected values; the small CNN (`cnn_small`) its preset's "
            "(lr 0.01, 10 epochs, lr x0.1 at 6 and 8), unsearched, and its fine-tune baseline "
            "continues the CE run (*CE → fine-tune*: 10 epochs on the clean set at lr 0.001, "
            "exactly as *MW-Net → fine-tune* continues the MW-Net run) instead of repeating "
            "CE's training. Seeds as the table says: a regime stopped early keeps whole "
            "seeds, every method on the same data.",
            "",
            full,
            "",
            verdict_table(res, group="full-train"),
            "",
        ]
    return lines


def _group_sections(res: Results, scale: Scale) -> list[str]:
    lines: list[str] = []
    aware = class_aware_table(res)
    if aware:
        lines += [
            "## CMW-Net: one weighting curve per class cluster",
            "",
            "Classes are clustered by their observed training-set size (3 clusters, k-means "
            "on the counts); differences are last-epoch accuracy in points, mean over seeds, "
            "judged against the seeds' spread.",
            "",
            aware,
            "",
        ]
    no_clean = no_clean_table(res)
    if no_clean:
        lines += [
            "## No clean data",
            "",
            "The same training images and corrupted labels as every other table (the clean "
            "split is set aside unread), but no clean example at all: a pseudo-meta set of the "
            "10 lowest-loss samples per observed class is picked every epoch after a "
            f"{scale.pseudo_meta_warmup}-epoch cross-entropy warm-up, ranked by the loss "
            "under an EMA teacher of the model. The best method that reads the 1,000 clean "
            "images is shown for reference, and the share of right labels in the last "
            "pseudo-meta set (label-correction runs).",
            "",
            no_clean,
            "",
        ]
    cost = cost_table(res)
    if cost:
        lines += [
            "## Cost: accuracy against training time (flip2 noise 40 %)",
            "",
            "Runs shared the machine two at a time with other jobs, so the times are "
            "comparable with each other, not with a quiet machine's.",
            "",
            cost,
            "",
        ]
    return lines


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.escape(HEADLINE_START) + r".*?" + re.escape(HEADLINE_END)
    if not re.search(pattern, text, re.S):
        return
    block = f"{HEADLINE_START}\n{table}\n{HEADLINE_END}"
    with atomic_write(readme) as f:
        f.write(re.sub(pattern, lambda _: block, text, flags=re.S))


__all__ = ["LRS", "Results", "run_dir_of", "state_of", "write_report"]
