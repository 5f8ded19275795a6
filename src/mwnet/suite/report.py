"""Turn the suite's run directories into docs/RESULTS.md, its plots and the README table.

Everything here reads files (``summary.json``, ``metrics.jsonl``, ``sample_weights.csv``,
``weight_function.csv``), never live training state, so the report can be regenerated
from a finished or partly finished suite at any time. Numbers in the text are computed,
not typed: a hand-written reading between the ``reading`` markers of an existing
RESULTS.md is kept across regenerations, everything else is rewritten.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.label_issues.metrics import auroc
from mwnet.run.atomic import atomic_write
from mwnet.run.records import read_json, read_jsonl, read_sample_weights, read_weight_function
from mwnet.suite.grid import METHODS, NO_CLEAN_METHODS, SETTINGS, MethodSpec, Setting
from mwnet.train.loop import summary_finished as finished

READING_START = "<!-- reading -->"
READING_END = "<!-- /reading -->"
HEADLINE_START = "<!-- suite-headline -->"
HEADLINE_END = "<!-- /suite-headline -->"
MWNET_METHODS = ("mwnet-fast", "mwnet-head")
CLEAN_SET_METHODS = ("l2rw", "finetune", "mwnet-fast", "mwnet-head", "cmwnet")
"""The default grid's methods that read the 1,000 clean images."""
PSEUDO_META_METHODS = ("mwnet-auto", "mwnet-sl", "cmwnet-sl")
DETECTORS = ("mwnet-fast", "mwnet-head", "cmwnet", "l2rw")
WF = "weight_function.csv"


@dataclass
class Run:
    """One finished cell, as read back from its run directory."""

    setting: str
    method: str
    seed: int
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    run_dir: Path
    auroc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return float(self.summary["best_test_acc"])

    @property
    def last(self) -> float:
        return float(self.summary["last_test_acc"])


def collect(out: Path) -> list[Run]:
    """Every finished cell under ``out`` (unfinished ones are left out of the report)."""
    runs = []
    for setting in SETTINGS:
        for method in METHODS:
            for run_dir in sorted((out / setting.name).glob(f"{method.name}-seed*")):
                summary_file = run_dir / "summary.json"
                if not summary_file.is_file():
                    continue
                summary = read_json(summary_file)
                if not finished(summary):
                    continue
                seed = int(run_dir.name.rsplit("seed", 1)[1])
                run = Run(
                    setting.name,
                    method.name,
                    seed,
                    summary,
                    read_jsonl(run_dir / "metrics.jsonl"),
                    run_dir,
                )
                weights_file = run_dir / "sample_weights.csv"
                learns_weights = method.name.startswith(("mwnet", "cmwnet", "l2rw"))
                if setting.noisy and learns_weights and weights_file.is_file():
                    table = read_sample_weights(weights_file)
                    # A low weight should flag a corrupted label: score = -weight.
                    run.auroc = auroc(-table["weight"], table["corrupted"])
                runs.append(run)
    return runs


def _select(runs: Sequence[Run], setting: str, method: str) -> list[Run]:
    return [r for r in runs if r.setting == setting and r.method == method]


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
    wf, sw = run.run_dir / "weight_function.csv", run.run_dir / "sample_weights.csv"
    if not wf.is_file() or not sw.is_file():
        return None
    losses, weights = read_weight_function(wf)
    sample_losses = read_sample_weights(sw)["loss"]
    low, high = np.percentile(sample_losses, [1, 99])
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


# --- tables ---------------------------------------------------------------------------


def setting_table(runs: Sequence[Run], setting: Setting) -> str:
    lines = [
        "| method | best-epoch acc % | last-epoch acc % | last - best | wall time / run |"
        + (" weight clean / corrupted | AUROC (corrupted) |" if setting.noisy else ""),
        "|---|---|---|---|---|" + ("---|---|" if setting.noisy else ""),
    ]
    for method in METHODS:
        rs = _select(runs, setting.name, method.name)
        if not rs:
            continue
        drops = [r.last - r.best for r in rs]
        wall = np.mean([r.summary["wall_time"] for r in rs])
        row = (
            f"| {method.title} | {_fmt([r.best for r in rs])} | {_fmt([r.last for r in rs])} "
            f"| {np.mean(drops):+.2f} | {wall:.0f} s |"
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


def headline_table(runs: Sequence[Run], default: bool = True) -> str:
    """Settings x methods, last-epoch test accuracy (mean ± std), best mean in bold: the
    default grid's methods, or (``default=False``) the extra ones that have runs."""
    methods = [m for m in METHODS if m.default == default and any(r.method == m.name for r in runs)]
    if not methods:
        return ""
    lines = [
        "| setting | " + " | ".join(m.title for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for setting in SETTINGS:
        cells = [_select(runs, setting.name, m.name) for m in methods]
        if not any(cells):
            continue
        means = [np.mean([r.last for r in rs]) if rs else -np.inf for rs in cells]
        top = int(np.argmax(means))
        texts = []
        for k, rs in enumerate(cells):
            text = _fmt([r.last for r in rs], 1)
            texts.append(f"**{text}**" if k == top and rs else text)
        lines.append(f"| {setting.title} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


# --- the computed reading -------------------------------------------------------------


def _compare(a: Sequence[float], b: Sequence[float]) -> tuple[float, str]:
    """Mean difference a - b, and whether it exceeds the seeds' spread."""
    diff = float(np.mean(a) - np.mean(b))
    spread = float(np.hypot(_mean_std(a)[1], _mean_std(b)[1]))
    if len(a) < 2 or len(b) < 2:
        return diff, "one seed, no spread to judge by"
    if abs(diff) <= spread:
        return diff, "within the seeds' spread"
    return diff, "beyond the seeds' spread"


def cost_table(runs: Sequence[Run], setting: str = "flip2-40") -> str:
    """Accuracy against training time on one setting, time as a multiple of CE's."""
    ce = _select(runs, setting, "ce")
    if not ce:
        return ""
    ce_time = float(np.mean([r.summary["wall_time"] for r in ce]))
    lines = [
        "| method | last-epoch acc % | wall time / run | x CE |",
        "|---|---|---|---|",
    ]
    for method in METHODS:
        rs = _select(runs, setting, method.name)
        if not rs:
            continue
        wall = float(np.mean([r.summary["wall_time"] for r in rs]))
        ratio = f"{wall / ce_time:.2f}" if ce_time > 0 else "n/a"
        lines.append(f"| {method.title} | {_fmt([r.last for r in rs])} | {wall:.0f} s | {ratio} |")
    return "\n".join(lines)


def class_aware_table(runs: Sequence[Run]) -> str:
    """CMW-Net against MW-Net (fast) and class-balanced loss, with its class clusters and
    the direction of each cluster's learned curve (seed 0)."""
    lines = [
        "| setting | CMW-Net - MW-Net (fast) | CMW-Net - class-balanced | classes per cluster"
        " (largest first) | curve per cluster, seed 0 |",
        "|---|---|---|---|---|",
    ]
    found = False
    for setting in SETTINGS:
        cm = _select(runs, setting.name, "cmwnet")
        if not cm:
            continue
        found = True
        diffs = []
        for other in ("mwnet-fast", "class-balanced"):
            rs = _select(runs, setting.name, other)
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


def no_clean_table(runs: Sequence[Run]) -> str:
    """The methods that never read a clean example, beside the best clean-set method."""
    if not any(r.method in PSEUDO_META_METHODS for r in runs):
        return ""
    methods = [m for m in NO_CLEAN_METHODS if any(r.method == m for r in runs)]
    lines = [
        "| setting | "
        + " | ".join(_title(m) for m in methods)
        + " | best with the clean set | pseudo-meta labels right (last epoch) |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    for setting in SETTINGS:
        cells = [_select(runs, setting.name, m) for m in methods]
        if not any(cells):
            continue
        means = [np.mean([r.last for r in rs]) if rs else -np.inf for rs in cells]
        top = int(np.argmax(means))
        texts = [
            (f"**{_fmt([r.last for r in rs], 1)}**" if k == top else _fmt([r.last for r in rs], 1))
            for k, rs in enumerate(cells)
        ]
        clean = {m: _select(runs, setting.name, m) for m in CLEAN_SET_METHODS}
        clean = {m: rs for m, rs in clean.items() if rs}
        best = ""
        if clean:
            name = max(clean, key=lambda m: np.mean([r.last for r in clean[m]]))
            best = f"{_title(name)}: {_fmt([r.last for r in clean[name]], 1)}"
        precision = [
            r.metrics[-1].get("meta_precision")
            for m in ("cmwnet-sl", "mwnet-sl")
            for r in _select(runs, setting.name, m)
        ]
        precision = [p for p in precision if p is not None]
        right = f"{100 * np.mean(precision):.1f} %" if precision else "n/a"
        lines.append(f"| {setting.title} | " + " | ".join(texts) + f" | {best} | {right} |")
    return "\n".join(lines)


def computed_findings(runs: Sequence[Run]) -> list[str]:
    out = []
    for setting in SETTINGS:
        ce = _select(runs, setting.name, "ce")
        fast = _select(runs, setting.name, "mwnet-fast")
        if not ce:
            continue
        parts = [f"**{setting.title}**:"]
        drop = np.mean([r.last - r.best for r in ce])
        parts.append(f"CE ends {abs(drop):.2f} points {'below' if drop < 0 else 'above'} its best")
        means = {
            m.name: np.mean([r.last for r in _select(runs, setting.name, m.name)])
            for m in METHODS
            if _select(runs, setting.name, m.name)
        }
        winner = max(means, key=lambda k: means[k])
        parts.append(f"top last-epoch accuracy: {_title(winner)} ({means[winner]:.2f} %)")
        if fast:
            diff, verdict = _compare([r.last for r in fast], [r.last for r in ce])
            parts.append(f"MW-Net (fast) minus CE, last epoch: {diff:+.2f} points ({verdict})")
            trend = _weight_trend(fast[0])
            if trend:
                parts.append(f"learned weighting function: {trend}")
            aurocs = [r.auroc for r in fast if r.auroc is not None]
            if aurocs:
                parts.append(f"AUROC of its weights for corrupted labels {np.mean(aurocs):.3f}")
        out.append("- " + parts[0] + " " + "; ".join(parts[1:]) + ".")
    return out


def _title(method: str) -> str:
    return next(m.title for m in METHODS if m.name == method)


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
    sample_losses = read_sample_weights(run.run_dir / "sample_weights.csv")["loss"]
    return losses <= max(float(np.percentile(sample_losses, 99)), losses.min() + 1e-6)


def plot_weighting_functions(runs: Sequence[Run], path: Path) -> Path | None:
    shown = [s for s in SETTINGS if any(_select(runs, s.name, m)[:1] for m in MWNET_METHODS)]
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        for method, style in zip(MWNET_METHODS, ("-", "--"), strict=True):
            rs = _select(runs, setting.name, method)
            if not rs or not (rs[0].run_dir / "weight_function.csv").is_file():
                continue
            losses, weights = read_weight_function(rs[0].run_dir / "weight_function.csv")
            keep = _usual_losses(rs[0], losses)
            scale = max(float(weights[keep].max()), 1e-12)
            ax.plot(losses[keep], weights[keep] / scale, style, label=_title(method))
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("training loss")
        ax.set_ylabel("weight / max weight")
        ax.legend(fontsize=7)
    fig.suptitle("Learned weighting functions (seed 0), up to the 99th percentile of losses")
    return _save(fig, path)


def plot_class_aware_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """CMW-Net's learned curve of each class cluster, per setting (seed 0)."""
    shown = [s for s in SETTINGS if _select(runs, s.name, "cmwnet")]
    shown = [s for s in shown if (_select(runs, s.name, "cmwnet")[0].run_dir / WF).is_file()]
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        run = _select(runs, setting.name, "cmwnet")[0]
        losses, weights = read_weight_function(run.run_dir / WF)
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


def plot_meta_precision(runs: Sequence[Run], path: Path) -> Path | None:
    """How clean the pseudo-meta set is, epoch by epoch (seed 0, noisy settings)."""
    shown = [
        s
        for s in SETTINGS
        if s.noisy and any(_select(runs, s.name, m) for m in PSEUDO_META_METHODS)
    ]
    if not shown:
        return None
    fig, axes = _settings_grid(len(shown))
    for ax, setting in zip(axes, shown, strict=True):
        for method in PSEUDO_META_METHODS:
            rs = _select(runs, setting.name, method)
            if not rs:
                continue
            points = [
                (m["epoch"], 100 * m["meta_precision"])
                for m in rs[0].metrics
                if m.get("meta_precision") is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=_title(method))
        first = next(r for r in runs if r.setting == setting.name and r.seed == 0)
        rate = 100 * (1 - first.summary["realized_noise_rate"])
        ax.axhline(rate, color="grey", linestyle=":", label="labels right in the data")
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("pseudo-meta labels right %")
        ax.legend(fontsize=7)
    fig.suptitle("Label precision of the pseudo-meta set (no clean data; seed 0)")
    return _save(fig, path)


def plot_weight_histograms(runs: Sequence[Run], path: Path) -> Path | None:
    shown = [s for s in SETTINGS if s.noisy and _select(runs, s.name, "mwnet-fast")]
    if not shown:
        return None
    fig, axes = _figure(1, len(shown), (3.2 * len(shown), 3))
    for ax, setting in zip(axes.flat, shown, strict=True):
        run = _select(runs, setting.name, "mwnet-fast")[0]
        table = read_sample_weights(run.run_dir / "sample_weights.csv")
        w, bad = table["weight"], table["corrupted"]
        bins = np.linspace(float(w.min()), float(w.max()) + 1e-12, 40)
        ax.hist(w[~bad], bins=bins, alpha=0.6, density=True, label="clean", color="tab:blue")
        ax.hist(w[bad], bins=bins, alpha=0.6, density=True, label="corrupted", color="tab:red")
        ax.set_title(f"{setting.title}\nAUROC {run.auroc:.3f}" if run.auroc else setting.title)
        ax.set_xlabel("final weight")
        ax.legend(fontsize=7)
    fig.suptitle("MW-Net (fast) weights of clean vs corrupted training samples (seed 0)")
    return _save(fig, path)


def plot_auroc(runs: Sequence[Run], path: Path) -> Path | None:
    shown = [s for s in SETTINGS if s.noisy]
    data = {
        m: [[r.auroc for r in _select(runs, s.name, m) if r.auroc is not None] for s in shown]
        for m in DETECTORS
    }
    if not any(v for values in data.values() for v in values):
        return None
    fig, axes = _figure(1, 1, (8, 3.4))
    ax = axes[0, 0]
    width = 0.8 / len(DETECTORS)
    x = np.arange(len(shown))
    for k, method in enumerate(DETECTORS):
        means = [np.mean(v) if v else np.nan for v in data[method]]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in data[method]]
        offset = (k - (len(DETECTORS) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=stds, label=_title(method), capsize=2)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [s.name for s in shown], fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("AUROC (low weight = corrupted)")
    ax.legend(fontsize=7)
    ax.set_title("Final sample weights as a detector of corrupted labels (mean ± std over seeds)")
    return _save(fig, path)


def plot_accuracy_vs_time(runs: Sequence[Run], path: Path) -> Path | None:
    shown = [s for s in SETTINGS if s.name in ("flip2-40", "uniform-60", "lt-100-flip2-20")]
    shown = [s for s in shown if _select(runs, s.name, "ce")]
    if not shown:
        return None
    fig, axes = _figure(1, len(shown), (4.2 * len(shown), 3.2))
    for ax, setting in zip(axes.flat, shown, strict=True):
        for method in ("ce", *MWNET_METHODS, "mwnet-fast-k5", "mwnet-head-k5"):
            rs = _select(runs, setting.name, method)
            if not rs:
                continue
            times = [m["wall_time"] for m in rs[0].metrics]
            accs = [m["test_acc"] for m in rs[0].metrics]
            ax.plot(times, accs, label=_title(method))
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("wall-clock seconds (one core)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy against training time (seed 0)")
    return _save(fig, path)


# --- the document ---------------------------------------------------------------------


def _kept_reading(previous: Path) -> str:
    if previous.is_file():
        text = previous.read_text(encoding="utf-8")
        found = re.search(re.escape(READING_START) + r"(.*?)" + re.escape(READING_END), text, re.S)
        if found:
            return found.group(1).strip("\n")
    return "_No reading written yet._"


def _environment() -> str:
    import torch

    import mwnet

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"mwnet {mwnet.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, {cpu}"
    )


def write_report(
    out: Path,
    docs: Path,
    command: str,
    scale: Any,
    suite_info: dict[str, Any],
    readme: Path | None = None,
) -> list[Path]:
    """RESULTS.md and plots in ``docs`` from the runs under ``out``; the README's headline
    block (between the suite-headline markers) when ``readme`` is given."""
    runs = collect(out)
    figures = docs / "results"
    figures.mkdir(parents=True, exist_ok=True)
    written = [
        p
        for p in (
            plot_weighting_functions(runs, figures / "weighting_functions.png"),
            plot_class_aware_curves(runs, figures / "class_aware_curves.png"),
            plot_meta_precision(runs, figures / "meta_precision.png"),
            plot_weight_histograms(runs, figures / "weight_histograms.png"),
            plot_auroc(runs, figures / "auroc.png"),
            plot_accuracy_vs_time(runs, figures / "accuracy_vs_time.png"),
        )
        if p is not None
    ]
    results = docs / "RESULTS.md"
    text = render(runs, command, scale, suite_info, _kept_reading(results), written, docs)
    with atomic_write(results) as f:
        f.write(text)
    written.append(results)
    if readme is not None and readme.is_file():
        update_readme(readme, headline_table(runs))
        written.append(readme)
    return written


def _meta_sizes(runs: Sequence[Run]) -> str:
    """ "1,000 (noisy and clean settings) and 100 (long-tailed)", from the runs' summaries."""
    by_kind: dict[str, set[int]] = {}
    for run in runs:
        if run.method in PSEUDO_META_METHODS:  # they read no clean image at all
            continue
        setting = next(s for s in SETTINGS if s.name == run.setting)
        kind = "long-tailed" if setting.imbalanced else "noisy and clean"
        by_kind.setdefault(kind, set()).add(int(run.summary["meta_samples"]))
    parts = [
        f"{'/'.join(f'{n:,}' for n in sorted(sizes))} ({kind} settings)"
        for kind, sizes in sorted(by_kind.items(), reverse=True)
    ]
    return " and ".join(parts) or "no"


def _method_line(method: MethodSpec) -> str:
    extra = "" if method.default else " (*extra*)"
    overrides = (*method.overrides, *(method.weight_optimizer or ()))
    return f"  - {method.title}{extra}: `{' '.join(overrides)}`"


def render(
    runs: Sequence[Run],
    command: str,
    scale: Any,
    suite_info: dict[str, Any],
    reading: str,
    figures: Sequence[Path],
    docs: Path,
) -> str:
    default = {m.name for m in METHODS if m.default}
    n_runs = sum(r.method in default for r in runs)
    n_extra = len(runs) - n_runs
    wall = sum(r.summary["wall_time"] for r in runs if r.method in default)
    elapsed = suite_info.get("elapsed_seconds")
    lines = [
        "# Results: when does learned weighting help? (Fashion-MNIST)",
        "",
        "Generated by `" + command + "`; do not edit by hand except between the reading "
        "markers. All numbers are test accuracy (%) on the 10,000 Fashion-MNIST test images,"
        " mean ± sample std over seeds; *best* is the best epoch, *last* the final epoch "
        "(what you get without peeking at the test set).",
        "",
        "## Setup",
        "",
        f"- Scale `{scale.name}`: a 784-{scale.hidden}-10 MLP, {scale.subset:,} training images"
        f" (a seeded subset, taken after the meta split and the long-tail subsampling), "
        f"{scale.epochs} epochs of SGD (lr 0.05, momentum 0.9, weight decay 5e-4, lr x0.1 at "
        f"epochs {', '.join(map(str, scale.milestones))}), batch 100, no augmentation, one "
        "CPU thread per run.",
        f"- Meta set: {_meta_sizes(runs)} clean images carved from the training set "
        "before anything else (the paper's sizes: 1,000 for label noise, 10 per class for "
        "class imbalance); the methods that use clean data (L2RW, fine-tune, MW-Net, "
        "CMW-Net) use this set, the others never see it (the no-clean-data runs carve it "
        "too, so that they train on the same images, and never read it).",
        f"- Seeds {', '.join(map(str, scale.noisy_seeds))} for the noisy and long-tailed "
        f"settings, seed {', '.join(map(str, scale.clean_seeds))} for clean labels; the seed "
        "sets the split, the corruption and the training.",
        "- Weighting-net optimizer as in the authors' scripts: Adam 1e-3 (weight decay 1e-4) "
        "wherever labels are noisy or clean, SGD 1e-5 (momentum 0.9, Nesterov, weight decay "
        "5e-4) for pure class imbalance.",
        "- Methods (overrides on top of the shared ones; the ones marked *extra* are not "
        "part of the default grid and ran with `--methods`):",
        *[_method_line(m) for m in METHODS if any(r.method == m.name for r in runs)],
        f"- The default grid: {n_runs} finished runs, {wall / 3600:.2f} h of training summed "
        "over runs"
        + (
            f"; the suite took {elapsed / 3600:.2f} h of wall-clock time with "
            f"{suite_info.get('jobs')} parallel runs"
            if elapsed
            else ""
        )
        + (f"; {n_extra} extra runs besides" if n_extra else "")
        + ". Wall time per run counts training and per-epoch evaluation, not start-up.",
        f"- Environment: {_environment()}.",
        "",
        "## Headline: last-epoch test accuracy",
        "",
        headline_table(runs),
        "",
        *(
            [
                "Extra runs (same data, splits and seeds; not in the default grid):",
                "",
                headline_table(runs, default=False),
                "",
            ]
            if n_extra
            else []
        ),
        "## Reading",
        "",
        READING_START,
        reading,
        READING_END,
        "",
        "## Computed findings",
        "",
        *computed_findings(runs),
        "",
        *(
            [
                "## CMW-Net: one weighting curve per class cluster",
                "",
                "Classes are clustered by their observed training-set size (3 clusters, "
                "k-means on the counts); differences are last-epoch accuracy in points, "
                "mean over seeds, judged against the seeds' spread.",
                "",
                class_aware_table(runs),
                "",
            ]
            if class_aware_table(runs)
            else []
        ),
        *(
            [
                "## No clean data",
                "",
                "The same training images and corrupted labels as every other table (the "
                "clean split is set aside unread), but no clean example at all: a "
                "pseudo-meta set of the 10 lowest-loss samples per observed class is picked "
                f"every epoch after a {scale.pseudo_meta_warmup}-epoch cross-entropy "
                "warm-up, ranked by the loss under an EMA teacher of the model. Last-epoch "
                "test accuracy; the "
                "best method of the default grid that reads the 1,000 clean images is "
                "shown for reference, and the share of right labels in the last pseudo-meta "
                "set (label-correction runs).",
                "",
                no_clean_table(runs),
                "",
            ]
            if no_clean_table(runs)
            else []
        ),
        "## Cost: accuracy against training time (flip2 noise 40 %)",
        "",
        "Runs shared the machine two at a time, so the times are comparable with each "
        "other, not with a quiet machine's.",
        "",
        cost_table(runs),
        "",
        "## Per setting",
        "",
    ]
    for setting in SETTINGS:
        rs = [r for r in runs if r.setting == setting.name]
        if not rs:
            continue
        rates = sorted({round(r.summary["realized_noise_rate"] * 100, 2) for r in rs})
        samples = sorted({r.summary["train_samples"] for r in rs})
        lines += [
            f"### {setting.title}",
            "",
            f"Realised noise rate: {', '.join(f'{v:.2f} %' for v in rates)} (per seed); "
            f"training images: {', '.join(f'{n:,}' for n in samples)}; "
            f"overrides: `{' '.join(setting.overrides)}`.",
            "",
            setting_table(runs, setting),
            "",
        ]
    if figures:
        lines += ["## Plots", ""]
        for fig in figures:
            lines += [f"![{fig.stem}]({fig.relative_to(docs).as_posix()})", ""]
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    pattern = re.escape(HEADLINE_START) + r".*?" + re.escape(HEADLINE_END)
    if not re.search(pattern, text, re.S):
        return
    block = f"{HEADLINE_START}\n{table}\n{HEADLINE_END}"
    with atomic_write(readme) as f:
        f.write(re.sub(pattern, lambda _: block, text, flags=re.S))
