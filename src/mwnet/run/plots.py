"""PNG plots of what a run learned, drawn from the files in its run directory.

Plots are made from the files rather than from live training state so that any run,
finished, interrupted or copied from another machine, can be (re)plotted with
``mwnet plot``. matplotlib is imported only inside :func:`plot_run`, so ``import mwnet``
stays light; figures are built with ``matplotlib.figure.Figure`` and the Agg canvas
directly rather than through pyplot, which leaves the caller's pyplot backend and open
figures (say, in a notebook) untouched and leaves no figure registered to close.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mwnet.run.atomic import atomic_write
from mwnet.run.records import read_jsonl, read_sample_weights, read_weight_function

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WEIGHT_FUNCTION_FILE = "weight_function.csv"
SAMPLE_WEIGHTS_FILE = "sample_weights.csv"
METRICS_FILE = "metrics.jsonl"

_CLEAN_COLOR = "tab:blue"
_CORRUPTED_COLOR = "tab:red"
_TEST_COLOR = "black"
_DPI = 120


def plot_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw every plot that the files in ``run_dir`` allow; return the PNGs written.

    - ``weighting_function.png`` from ``weight_function.csv``: the learned loss-to-weight
      curve (absent for methods that learn none, such as plain cross-entropy);
    - ``weight_histogram.png`` from ``sample_weights.csv``: weights of clean vs corrupted
      samples, the direct test of whether MW-Net down-weights the noise;
    - ``accuracy.png`` from ``metrics.jsonl``: test accuracy per epoch, and when logged,
      training accuracy against the true labels and mean weight, clean vs corrupted.

    A plot whose input file is missing (or holds nothing to draw) is skipped, not an error.
    """
    run_dir = Path(run_dir)
    plotters: list[tuple[str, str, Callable[[Path], Figure | None]]] = [
        (WEIGHT_FUNCTION_FILE, "weighting_function.png", _weighting_function_figure),
        (SAMPLE_WEIGHTS_FILE, "weight_histogram.png", _weight_histogram_figure),
        (METRICS_FILE, "accuracy.png", _accuracy_figure),
    ]
    written = []
    for source, target, make_figure in plotters:
        if not (run_dir / source).is_file():
            continue
        figure = make_figure(run_dir / source)
        if figure is None:
            continue
        out = run_dir / target
        with atomic_write(out, "wb") as f:
            figure.savefig(f, format="png", dpi=_DPI)
        written.append(out)
    return written


def _new_figure(nrows: int = 1, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure, list(axes)


def _weighting_function_figure(source: Path) -> Figure | None:
    losses, weights = read_weight_function(source)
    curves = weights[:, None] if weights.ndim == 1 else weights
    finite = np.isfinite(losses) & np.isfinite(curves).all(axis=1)
    losses, curves = losses[finite], curves[finite]
    if len(losses) == 0:
        return None
    order = np.argsort(losses)
    figure, (ax,) = _new_figure()
    if weights.ndim == 1:
        ax.plot(losses[order], curves[order, 0], color=_CLEAN_COLOR, linewidth=2)
    else:
        for k in range(curves.shape[1]):
            ax.plot(losses[order], curves[order, k], linewidth=2, label=_cluster_label(k, curves))
        ax.legend(title="class cluster")
    weights = curves
    ax.set_title("Learned weighting function")
    ax.set_xlabel("training loss of a sample")
    ax.set_ylabel("weight")
    high = float(losses.max())
    samples = source.parent / SAMPLE_WEIGHTS_FILE
    if samples.is_file():
        high = _draw_loss_distribution(ax, read_sample_weights(samples)["loss"], losses)
    ax.set_xlim(losses.min(), high)
    ax.set_ylim(bottom=0, top=max(1.05 * float(weights.max()), 1e-6))
    return figure


def _draw_loss_distribution(ax: Axes, sample_losses: np.ndarray, grid: np.ndarray) -> float:
    """Shade where the training samples' final losses lie, behind the curve, and return
    the right end of the range worth showing: the curve far beyond every sample's loss is
    an extrapolation nobody's weight came from."""
    sample_losses = sample_losses[np.isfinite(sample_losses)]
    if len(sample_losses) == 0:
        return float(grid.max())
    high = min(float(grid.max()), float(np.quantile(sample_losses, 0.995)) * 1.1)
    high = max(high, float(grid.min()) + 1e-6)
    shown = sample_losses[sample_losses <= high]
    beyond = 1 - len(shown) / len(sample_losses)
    twin = ax.twinx()
    twin.hist(shown, bins=60, density=True, color="0.85", zorder=0)
    twin.set_ylabel("density of final sample losses", color="0.5")
    twin.tick_params(axis="y", colors="0.5")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    if beyond > 0:
        ax.text(
            0.99,
            0.98,
            f"{100 * beyond:.1f} % of samples beyond",
            ha="right",
            va="top",
            transform=ax.transAxes,
            fontsize=8,
            color="0.4",
        )
    return high


def _cluster_label(k: int, curves: np.ndarray) -> str:
    last = curves.shape[1] - 1
    size = {0: " (largest classes)", last: " (smallest classes)"}.get(k, "") if last else ""
    return f"cluster {k}{size}"


def _weight_histogram_figure(source: Path) -> Figure | None:
    table = read_sample_weights(source)
    finite = np.isfinite(table["weight"])  # a diverged run can leave NaN weights
    known = "corrupted" in table
    corrupted = table["corrupted"] if known else np.zeros(len(finite), dtype=bool)
    weights, corrupted = table["weight"][finite], corrupted[finite]
    if len(weights) == 0:
        return None
    figure, (ax,) = _new_figure()
    bins = np.histogram_bin_edges(weights, bins=50)
    title = "Final sample weights, clean vs corrupted labels"
    groups = [("clean", ~corrupted, _CLEAN_COLOR), ("corrupted", corrupted, _CORRUPTED_COLOR)]
    if not known:
        title = "Final sample weights (given labels; which are wrong is not known)"
        groups = [("all samples", ~corrupted, _CLEAN_COLOR)]
    elif not corrupted.any():
        title = "Final sample weights (no corrupted labels)"
        groups = [("all samples", ~corrupted, _CLEAN_COLOR)]
    for name, mask, color in groups:
        if not mask.any():
            continue
        group = weights[mask]
        label = f"{name}: n={len(group):,}, mean={group.mean():.3g}"
        ax.hist(group, bins=bins, density=True, alpha=0.5, color=color, label=label)
        ax.axvline(group.mean(), color=color, linestyle="--", linewidth=1.5)
    ax.set_title(title)
    ax.set_xlabel("weight (dashed: group mean)")
    ax.set_ylabel("density")
    ax.legend()
    return figure


_TRAIN_SERIES = (
    ("train_acc_clean", "train, clean samples", _CLEAN_COLOR),
    ("train_acc_corrupted", "train, corrupted samples (vs true label)", _CORRUPTED_COLOR),
)
_GIVEN_TRAIN_SERIES = (("train_acc", "train (vs given labels)", _CLEAN_COLOR),)
_WEIGHT_SERIES = (
    ("mean_weight_clean", "clean samples", _CLEAN_COLOR),
    ("mean_weight_corrupted", "corrupted samples", _CORRUPTED_COLOR),
)
_GIVEN_WEIGHT_SERIES = (("mean_weight", "all samples", _CLEAN_COLOR),)


def _accuracy_figure(source: Path) -> Figure | None:
    by_epoch = _last_record_per_epoch(read_jsonl(source))
    test = _series(by_epoch, "test_acc")
    if test is None:
        return None
    # Clean vs corrupted where the run knew the truth (synthetic noise), else all samples.
    known = any(r.get("train_acc_corrupted") is not None for r in by_epoch.values()) or any(
        r.get("mean_weight_corrupted") is not None for r in by_epoch.values()
    )
    train_series = _TRAIN_SERIES if known else _GIVEN_TRAIN_SERIES
    weight_specs = _WEIGHT_SERIES if known else _GIVEN_WEIGHT_SERIES
    weight_series = [(key, _series(by_epoch, key)) for key, _, _ in weight_specs]
    has_weights = any(series is not None for _, series in weight_series)
    figure, axes = _new_figure(nrows=2 if has_weights else 1, height=6.4 if has_weights else 4)

    ax = axes[0]
    accuracy_values = [test[1]]
    ax.plot(*test, color=_TEST_COLOR, linewidth=2, label="test")
    for key, label, color in train_series:
        series = _series(by_epoch, key)
        if series is not None:
            ax.plot(*series, color=color, label=label)
            accuracy_values.append(series[1])
    scale = _format_accuracy_axis(ax, np.concatenate(accuracy_values))
    best = int(np.argmax(test[1]))
    ax.set_title(
        f"Accuracy per epoch (test: best {100 * test[1][best] / scale:.2f}% at epoch "
        f"{test[0][best]:g}, last {100 * test[1][-1] / scale:.2f}%)"
    )
    ax.legend()

    if has_weights:
        ax = axes[1]
        for (_, series), (_, label, color) in zip(weight_series, weight_specs, strict=True):
            if series is not None:
                ax.plot(*series, color=color, label=label)
        ax.set_title("Mean sample weight per epoch")
        ax.set_ylabel("mean weight")
        ax.set_ylim(bottom=0)
        ax.legend()
    axes[-1].set_xlabel("epoch")
    return figure


def _last_record_per_epoch(records: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """Per-epoch records only (step records lack ``test_acc``); a rerun epoch's last wins."""
    by_epoch: dict[float, dict[str, Any]] = {}
    for record in records:
        if isinstance(record.get("epoch"), (int, float)) and "test_acc" in record:
            by_epoch[record["epoch"]] = record
    return dict(sorted(by_epoch.items()))


def _series(
    by_epoch: dict[float, dict[str, Any]], key: str
) -> tuple[np.ndarray, np.ndarray] | None:
    points = [
        (epoch, float(record[key]))
        for epoch, record in by_epoch.items()
        if isinstance(record.get(key), (int, float)) and np.isfinite(record[key])
    ]
    if not points:
        return None
    epochs, values = zip(*points, strict=True)
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def _format_accuracy_axis(ax: Axes, values: np.ndarray) -> float:
    """Show percentages whether the loop logs accuracy as a fraction or as a percent.

    Returns the value that means 100% (1 or 100).
    """
    from matplotlib.ticker import PercentFormatter

    scale = 1.0 if values.max() <= 1.0 else 100.0
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=scale))
    ax.set_ylabel("accuracy")
    # Zoomed on the values, so that a point of accuracy shows; never past 0 % or 100 %.
    low, high = float(values.min()), float(values.max())
    pad = max(0.05 * (high - low), 0.005 * scale)
    ax.set_ylim(bottom=max(0.0, low - pad), top=min(scale * 1.005, high + pad))
    return scale
