"""The report's Markdown tables, and the numbers they hold.

Every number is computed here from :class:`~mwnet.suite.runs.Results` (each method at its
selected hyperparameters, over its seeds), never typed: means ± sample std over seeds, a
difference judged against the seeds' spread, margins paired by seed, the verdict of
mwnet's best against the best method, the selection's grid and its margin rule, the
direction of a learned weighting curve. Each table comes back as Markdown, empty where the
suite has no run for it, so the page (:mod:`mwnet.suite.page`) only places them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mwnet.suite.grid import (
    CLEAN_SIZE_METHODS,
    NO_CLEAN_METHODS,
    PSEUDO_META_METHODS,
    SETTINGS,
    MethodSpec,
    Setting,
    clean_size_row,
    method_named,
    methods_of,
    setting_named,
    suite_methods,
)
from mwnet.suite.runs import Results, Run
from mwnet.suite.selection import Selection, State

MWNET_FAMILY = (
    "mwnet-fast",
    "mwnet-head",
    "cmwnet",
    "cmwnet-sl",
    "mwnet-sl",
    "mwnet-auto",
    "mwnet-fast-k5",
    "mwnet-head-k5",
    "mwnet-famus",
    "mwnet-partial",
    "mwnet-partial-k5",
    "mwnet-dynamics",
    "mwnet-history",
    "mwnet-gate",
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
    methods = [m for m in suite_methods() if m.default == default and m.name in names]
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
        everyone = [m.name for m in suite_methods()]
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
            margin = f"{sign}{_fmt(diffs, 2)} over {method_named(rival).title}" if rival else "n/a"
            verdict = _verdict(diffs, win=True)
        else:
            margin = _fmt(diffs, 2)
            verdict = _verdict(diffs, win=False)
        lines.append(
            f"| {setting.title} | {method_named(best).title}: {_fmt([r.last for r in top], 1)} | "
            f"{method_named(ours).title}: {_fmt([r.last for r in mine], 1)} | {margin} | "
            f"{verdict} |"
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

    methods = [m for m in suite_methods() if any(started(s, m) for s in settings)]
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
    for method in methods_of(setting, tuple(m.name for m in suite_methods())):
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
    for method in suite_methods():
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


SEED_BY_SEED = (
    "mwnet-fast",
    "mwnet-dynamics",
    "mwnet-history",
    "mwnet-gate",
    "mwnet-head",
    "cmwnet",
)
"""The weighting methods whose every seed the report shows: MW-Net, its feature-input and
gated variants (where a wrong curve shows in the weights' AUROC), the cheap head and CMW-Net."""


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
        for method in SEED_BY_SEED:
            for run in sorted(res.select(setting.name, method), key=lambda r: r.seed):
                found = True
                a, b = run.auroc, run.issues_auroc if setting.noisy else None
                lines.append(
                    f"| {setting.title} | {method_named(method).title} | {run.seed} | "
                    f"{run.last:.1f} | "
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
        row_settings = clean_size_row(base)
        for method in CLEAN_SIZE_METHODS:
            cells = [_fmt([r.last for r in res.select(s, method)], 1) for s in row_settings]
            lines.append(
                f"| {base.title} | {method_named(method).title} | " + " | ".join(cells) + " |"
            )
        for method in ("ce", "cmwnet-sl"):
            rs = res.select(base.name, method)
            if rs:
                text = _fmt([r.last for r in rs], 1)
                lines.append(
                    f"| {base.title} | {method_named(method).title} (reads no clean image) | "
                    f"{text} | {text} | {text} |"
                )
    return "\n".join(lines)


def full_train_table(res: Results) -> str:
    settings = [s for s in SETTINGS if s.group == "full-train"]
    methods = [m for m in suite_methods() if any(res.select(s.name, m.name) for s in settings)]
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
    ratios = [  # a run under the summaries' 0.1 s resolution has no ratio
        r.summary["wall_time"] / ce_by_seed[r.seed] for r in mwnet if ce_by_seed.get(r.seed, 0) > 0
    ]
    return f"{minutes:.0f} min" + (f" ({np.mean(ratios):.1f}x)" if ratios else "")


REGIME_REFERENCE = "mwnet-fast"
"""What the regime's cheap modes are measured against: the exact hypergradient."""
REGIME_TARGET_GAP = 0.5
"""Points of last-epoch accuracy a cheap mode may lose to :data:`REGIME_REFERENCE`, in
every setting of the regime."""
REGIME_TARGET_COST = 1.5
"""A cheap mode's run time, in CE runs, at most."""


def _seed_values(runs: Sequence[Run], lost: Sequence[int]) -> str:
    """Each seed's last-epoch accuracy in seed order; a seed left out as collapsed says so."""
    values = {r.seed: f"{r.last:.1f}" for r in runs}
    values.update({seed: "collapsed" for seed in lost})
    return ", ".join(values[seed] for seed in sorted(values))


def _regime_cell(res: Results, setting: str, method: str) -> tuple[str, str]:
    """A method's accuracy text (mean ± std over the finished seeds, each seed, collapsed
    ones marked and left out) and its gap to MW-Net (fast), paired by seed."""
    runs = sorted(res.select(setting, method), key=lambda r: r.seed)
    lost = sorted(res.diverged.get((setting, method), []))
    if not runs and not lost:
        return "n/a", "n/a"
    text = f"{_fmt([r.last for r in runs], 1)} ({_seed_values(runs, lost)})" if runs else ""
    if lost:
        text += f"{' ' if text else ''}**{len(lost)} of {len(lost) + len(runs)} collapsed**"
    if method == REGIME_REFERENCE:
        return text, "0"
    diffs = _paired(runs, res.select(setting, REGIME_REFERENCE))
    return text, (f"{np.mean(diffs):+.1f}" if diffs else "n/a")


def _run_time_ratio(res: Results, settings: Sequence[Setting], method: str) -> float | None:
    """A run's wall time over CE's on the same setting and seed, averaged over both."""
    ratios = []
    for setting in settings:
        ce = {r.seed: r.summary["wall_time"] for r in res.select(setting.name, "ce")}
        ratios += [
            r.summary["wall_time"] / ce[r.seed]
            for r in res.select(setting.name, method)
            if ce.get(r.seed, 0) > 0
        ]
    return float(np.mean(ratios)) if ratios else None


def regime_table(res: Results) -> str:
    """The cheap MW-Net modes on the small CNN: per method and setting, last-epoch test
    accuracy (mean ± std over the seeds, then each seed), its gap to MW-Net (fast) (the
    mean of the per-seed differences) and the runs' wall time over CE's. A collapsed run
    (at chance on the validation split, or stopped on a non-finite loss) is marked and left
    out of the mean, as everywhere in the report."""
    settings = [s for s in SETTINGS if s.group == "regime"]
    settings = [s for s in settings if any(r.setting == s.name for r in res.runs)]
    if not settings:
        return ""
    shown = {s.name for s in settings}
    names = {r.method for r in res.runs if r.setting in shown}
    names |= {m for s, m in res.diverged if s in shown}
    listed = dict.fromkeys(m for s in settings for m in s.methods or ())
    methods = [method_named(m) for m in listed if m in names]
    head = ["method"]
    for setting in settings:
        head += [setting.title.split(",")[0], "gap to MW-Net (fast)"]
    head.append("run time x CE (these runs)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        row = [method.title]
        for setting in settings:
            row += list(_regime_cell(res, setting.name, method.name))
        ratio = _run_time_ratio(res, settings, method.name)
        row.append("n/a" if ratio is None else f"{ratio:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def regime_target(
    res: Results, gap: float = REGIME_TARGET_GAP, cost: float = REGIME_TARGET_COST
) -> str:
    """Which cheap modes are within ``gap`` points of MW-Net (fast) in every regime setting
    (mean of the per-seed differences; no collapsed seed), and which of those take at most
    ``cost`` CE runs of wall time in these runs; and whether CE itself is that close, in
    which case the settings cannot tell a mode that keeps the weighting from one that lost
    it."""
    settings = [s for s in SETTINGS if s.group == "regime"]
    settings = [s for s in settings if res.select(s.name, REGIME_REFERENCE)]
    if not settings:
        return ""

    def close_to_fast(method: str) -> bool:
        diffs = [
            _paired(res.select(s.name, method), res.select(s.name, REGIME_REFERENCE))
            for s in settings
        ]
        lost = any(res.diverged.get((s.name, method)) for s in settings)
        return not lost and all(diffs) and min(np.mean(d) for d in diffs) >= -gap

    close, cheap = [], []
    for method in dict.fromkeys(m for s in settings for m in s.methods or ()):
        if method in ("ce", REGIME_REFERENCE) or not close_to_fast(method):
            continue
        close.append(method_named(method).title)
        ratio = _run_time_ratio(res, settings, method)
        if ratio is not None and ratio <= cost:
            cheap.append(f"{method_named(method).title} ({ratio:.2f}x)")
    text = (
        f"Within {gap:g} points of MW-Net (fast) under "
        f"{' and '.join(s.title.split(',')[0] for s in settings)}, no seed collapsed: "
        f"{', '.join(close) or 'none'}; of these, at most {cost:g}x CE's run time in these "
        f"runs: {', '.join(cheap) or 'none'}."
    )
    if close_to_fast("ce"):
        text += (
            f" CE itself is within {gap:g} points of MW-Net (fast) in every setting here: "
            "these settings do not tell a mode that keeps the weighting's gain from one "
            "that loses it."
        )
    return text


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
    for method in suite_methods():
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
    for setting in res.main_settings():
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
        + " | ".join(method_named(m).title for m in methods)
        + " | best with the clean set | pseudo-meta labels right (last epoch) |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    for setting in res.main_settings():
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
            theirs = [r.last for r in res.select(setting.name, name)]
            best = f"{method_named(name).title}: {_fmt(theirs, 1)}"
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
        winner = _best(res, setting.name, [m.name for m in suite_methods()])
        if winner:
            mean = np.mean([r.last for r in res.select(setting.name, winner)])
            parts.append(f"top last-epoch accuracy: {method_named(winner).title} ({mean:.2f} %)")
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
