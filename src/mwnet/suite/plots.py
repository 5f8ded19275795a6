"""The report's figures, drawn with matplotlib from the same view the tables read.

Each ``plot_*`` function draws one PNG from :class:`~mwnet.suite.runs.Results` and returns
its path, or None (and writes nothing) where the suite has no run to show, so that the
page lists only the figures that exist. Figures are built without pyplot (no global state,
no display) and replace the old file in one step: an interrupted report leaves the last
image whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.run.atomic import atomic_write
from mwnet.suite.grid import (
    CLEAN_SIZE_METHODS,
    PSEUDO_META_METHODS,
    SETTINGS,
    Setting,
    clean_size_row,
    method_named,
    setting_named,
)
from mwnet.suite.runs import Results, Run

MWNET_METHODS = ("mwnet-fast", "mwnet-head")
"""The two MW-Net variants drawn beside the baselines against training time."""
DETECTORS = ("mwnet-fast", "mwnet-head", "cmwnet", "l2rw")
"""Methods whose final weights are scored as a detector of corrupted labels."""


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
        for s in res.main_settings()
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
                ax.plot(*zip(*points, strict=True), marker=".", label=method_named(method).title)
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
        for s in res.main_settings()
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
        label = method_named(method).title + (", mwnet issues" if kind == "issues" else ", weights")
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
    bases = [b for b in bases if any(res.select(s, "finetune") for s in clean_size_row(b))]
    if not bases:
        return None
    fig, axes = _figure(1, len(bases), (5.2 * len(bases), 3.6))
    for ax, base in zip(axes.flat, bases, strict=True):
        row = clean_size_row(base)
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
                label=method_named(method).title,
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
                    label=f"{method_named(method).title} (no clean image)",
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
            ax.plot(times, accs, label=method_named(method).title)
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("wall-clock seconds (one core)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.suptitle("Test accuracy against training time (seed 0, selected values)")
    return _save(fig, path)
