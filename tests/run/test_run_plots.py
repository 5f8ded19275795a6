"""plot_run: one PNG per plot the run directory's files allow, written atomically, each
showing the data of its file (the figures are inspected as they are saved)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mwnet.run import (
    append_jsonl,
    plot_run,
    write_sample_weights,
    write_weight_function,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = ["accuracy.png", "weight_histogram.png", "weighting_function.png"]
TEST_ACC = [0.52, 0.61, 0.74, 0.70, 0.72, 0.69, 0.71, 0.73]  # best at epoch 3, not the last
ONE_PANEL, TWO_PANELS = (768, 480), (768, 768)  # 6.4 x 4 and 6.4 x 6.4 inches at 120 dpi


def write_metrics(run_dir: Path, epochs: int = 5, weights: bool = True, scale: float = 1.0):
    for epoch in range(1, epochs + 1):
        append_jsonl(run_dir / "metrics.jsonl", {"step": epoch * 10, "train_loss": 1.0 / epoch})
        record = {"epoch": epoch, "test_acc": scale * TEST_ACC[epoch - 1]}
        record |= {"train_acc_clean": scale * 0.9, "train_acc_corrupted": scale * 0.1 * epoch}
        if weights:
            record |= {"mean_weight_clean": 0.8, "mean_weight_corrupted": 0.5 - 0.05 * epoch}
        append_jsonl(run_dir / "metrics.jsonl", record)


def write_samples(run_dir: Path, n: int = 200, corrupted_fraction: float = 0.4) -> None:
    rng = np.random.default_rng(0)
    corrupted = rng.random(n) < corrupted_fraction
    true_label = rng.integers(0, 10, n)
    label = np.where(corrupted, (true_label + 1) % 10, true_label)
    loss = np.where(corrupted, rng.gamma(4.0, 1.0, n), rng.gamma(1.0, 0.3, n))
    weight = 1.0 / (1.0 + np.exp(loss - 2.0))
    write_sample_weights(
        run_dir / "sample_weights.csv",
        np.arange(n),
        label,
        loss,
        weight,
        true_label=true_label,
        corrupted=corrupted,
    )


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every matplotlib Figure saved while the test runs, in the order saved."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def plotted(run_dir: Path, figures: list, names: list[str]) -> dict:
    """Run plot_run; check it wrote exactly ``names``; the figure behind each PNG."""
    before = len(figures)
    written = plot_run(run_dir)
    assert sorted(p.name for p in written) == sorted(names)
    assert len(figures) - before == len(written)  # one figure saved per PNG, in order
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    by_name = dict(zip((p.name for p in written), figures[before:], strict=True))
    for name, figure in by_name.items():
        panels = len({ax.get_position().bounds for ax in figure.axes})  # twins share one
        assert png_size(run_dir / name) == (ONE_PANEL if panels == 1 else TWO_PANELS), name
    return by_name


def epochs_in(run_dir: Path) -> list[dict]:
    """The per-epoch records of metrics.jsonl, read here with json, last one per epoch."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    by_epoch = {}
    for record in map(json.loads, lines):
        if "test_acc" in record:
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines() if line.get_label()[0] != "_"}


def assert_line(line, x, y) -> None:
    np.testing.assert_allclose(line.get_xdata(), x, rtol=1e-12, atol=0)
    np.testing.assert_allclose(line.get_ydata(), y, rtol=1e-12, atol=0)


def assert_accuracy_figure(figure, run_dir: Path, weights: bool, scale: float = 1.0) -> None:
    records = [r for r in epochs_in(run_dir) if np.isfinite(r["test_acc"])]
    epochs = [r["epoch"] for r in records]
    axes = figure.axes
    assert len(axes) == (2 if weights else 1)
    accuracy = lines_by_label(axes[0])
    assert sorted(accuracy) == sorted(
        ["test", "train, clean samples", "train, corrupted samples (vs true label)"]
    )
    assert_line(accuracy["test"], epochs, [r["test_acc"] for r in records])
    assert_line(accuracy["train, clean samples"], epochs, [r["train_acc_clean"] for r in records])
    assert_line(
        accuracy["train, corrupted samples (vs true label)"],
        epochs,
        [r["train_acc_corrupted"] for r in records],
    )
    test = np.array([r["test_acc"] for r in records])
    best = int(np.argmax(test))
    assert axes[0].get_title() == (
        f"Accuracy per epoch (test: best {100 * test[best] / scale:.2f}% at epoch "
        f"{epochs[best]}, last {100 * test[-1] / scale:.2f}%)"
    )
    # zoomed on the plotted values, within 0 % .. 100 %
    shown = np.concatenate([line.get_ydata() for line in accuracy.values()])
    low, high = axes[0].get_ylim()
    assert 0 <= low <= shown.min() and shown.max() <= high <= 1.005 * scale
    assert high - low <= 1.2 * (shown.max() - shown.min()) + 0.01 * scale
    if weights:
        mean_weight = lines_by_label(axes[1])
        assert sorted(mean_weight) == ["clean samples", "corrupted samples"]
        assert_line(mean_weight["clean samples"], epochs, [r["mean_weight_clean"] for r in records])
        assert_line(
            mean_weight["corrupted samples"], epochs, [r["mean_weight_corrupted"] for r in records]
        )
        assert axes[1].get_title() == "Mean sample weight per epoch"
    assert axes[-1].get_xlabel() == "epoch"


def assert_histogram_figure(figure, run_dir: Path) -> None:
    table = np.genfromtxt(run_dir / "sample_weights.csv", delimiter=",", names=True)
    finite = np.isfinite(table["weight"])
    weights, corrupted = table["weight"][finite], table["corrupted"][finite] == 1
    (ax,) = figure.axes
    edges = np.histogram_bin_edges(weights, bins=50)
    groups = [("clean", ~corrupted), ("corrupted", corrupted)]
    if not corrupted.any():
        groups = [("all samples", ~corrupted)]
        assert ax.get_title() == "Final sample weights (no corrupted labels)"
    else:
        assert ax.get_title() == "Final sample weights, clean vs corrupted labels"
    bars = ax.patches
    assert len(bars) == 50 * len(groups)
    means = [line.get_xdata()[0] for line in ax.get_lines()]  # the dashed group means
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for i, (name, mask) in enumerate(groups):
        group = weights[mask]
        density, _ = np.histogram(group, bins=edges, density=True)
        heights = [b.get_height() for b in bars[50 * i : 50 * (i + 1)]]
        np.testing.assert_allclose(heights, density, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose([b.get_x() for b in bars[50 * i : 50 * (i + 1)]], edges[:-1])
        assert means[i] == pytest.approx(group.mean(), rel=1e-12)
        assert legend[i] == f"{name}: n={len(group):,}, mean={group.mean():.3g}"


def assert_weighting_function_figure(figure, run_dir: Path) -> None:
    table = np.genfromtxt(run_dir / "weight_function.csv", delimiter=",", names=True)
    keep = np.isfinite(table["loss"]) & np.isfinite(table["weight"])
    losses, weights = table["loss"][keep], table["weight"][keep]
    order = np.argsort(losses)
    ax = figure.axes[0]
    (line,) = ax.get_lines()
    assert_line(line, losses[order], weights[order])
    assert ax.get_title() == "Learned weighting function"
    high = losses.max()
    if (run_dir / "sample_weights.csv").is_file():
        samples = np.genfromtxt(run_dir / "sample_weights.csv", delimiter=",", names=True)
        sample_losses = samples["loss"][np.isfinite(samples["loss"])]
        high = min(high, 1.1 * np.quantile(sample_losses, 0.995))
        (twin,) = figure.axes[1:]  # the final losses' distribution, behind the curve
        shown = sample_losses[sample_losses <= high]
        density, edges = np.histogram(shown, bins=60, density=True)
        np.testing.assert_allclose([b.get_height() for b in twin.patches], density, rtol=1e-9)
        np.testing.assert_allclose([b.get_x() for b in twin.patches], edges[:-1])
    assert ax.get_xlim() == pytest.approx((losses.min(), high))


def test_full_run_directory_gives_all_plots(tmp_path: Path, figures: list) -> None:
    write_metrics(tmp_path)
    write_samples(tmp_path)
    losses = np.random.default_rng(1).permutation(np.linspace(0.0, 8.0, 100))  # unsorted
    write_weight_function(tmp_path / "weight_function.csv", losses, np.exp(-losses / 2))
    shown = plotted(tmp_path, figures, ALL_PLOTS)
    assert_accuracy_figure(shown["accuracy.png"], tmp_path, weights=True)
    assert_histogram_figure(shown["weight_histogram.png"], tmp_path)
    assert_weighting_function_figure(shown["weighting_function.png"], tmp_path)
    line = shown["weighting_function.png"].axes[0].get_lines()[0]
    assert np.all(np.diff(line.get_xdata()) > 0)  # drawn in loss order, weights with them
    # The CSV keeps 6 significant digits, a relative rounding of at most 5e-6 in each column:
    # the weight's own, plus the loss's carried through exp(-x/2) as |x|/2 times it.
    x = line.get_xdata()
    rounding = 5e-6 * (1 + np.abs(x).max() / 2) * (1 + 1e-3)  # (1 + 1e-3): second order
    np.testing.assert_allclose(line.get_ydata(), np.exp(-x / 2), rtol=rounding, atol=0)


def test_metrics_only_gives_only_accuracy(tmp_path: Path, figures: list) -> None:
    write_metrics(tmp_path, weights=False)
    shown = plotted(tmp_path, figures, ["accuracy.png"])
    assert_accuracy_figure(shown["accuracy.png"], tmp_path, weights=False)


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["fraction", "percent"])
def test_accuracy_in_fractions_or_percent(tmp_path: Path, figures: list, scale: float) -> None:
    write_metrics(tmp_path, scale=scale)
    shown = plotted(tmp_path, figures, ["accuracy.png"])
    assert_accuracy_figure(shown["accuracy.png"], tmp_path, weights=True, scale=scale)
    ticks = shown["accuracy.png"].axes[0].yaxis.get_major_formatter()
    assert ticks(scale / 2) == "50%"


def test_uncorrupted_run_gives_one_histogram(tmp_path: Path, figures: list) -> None:
    write_samples(tmp_path, corrupted_fraction=0.0)
    shown = plotted(tmp_path, figures, ["weight_histogram.png"])
    assert_histogram_figure(shown["weight_histogram.png"], tmp_path)


def test_nothing_to_draw(tmp_path: Path) -> None:
    assert plot_run(tmp_path) == []
    append_jsonl(tmp_path / "metrics.jsonl", {"step": 10, "train_loss": 2.0})
    write_weight_function(tmp_path / "weight_function.csv", [], [])
    assert plot_run(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "weight_function.csv"]


def test_replotting_replaces_the_files(tmp_path: Path, figures: list) -> None:
    write_metrics(tmp_path, epochs=2)
    (first,) = plot_run(tmp_path)
    before = first.read_bytes()
    write_metrics(tmp_path, epochs=8)  # epochs 1 and 2 again, then 3 to 8
    shown = plotted(tmp_path, figures, ["accuracy.png"])
    assert (tmp_path / "accuracy.png").read_bytes() != before
    assert_accuracy_figure(shown["accuracy.png"], tmp_path, weights=True)
    assert list(lines_by_label(shown["accuracy.png"].axes[0])["test"].get_xdata()) == [*range(1, 9)]


def test_diverged_run_with_nan_values_still_plots(tmp_path: Path, figures: list) -> None:
    write_metrics(tmp_path)
    append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 6, "test_acc": float("nan")})
    nan_weight = np.array([0.5, np.nan, 0.7])
    ids = np.arange(3)
    write_sample_weights(
        tmp_path / "sample_weights.csv",
        ids,
        ids,
        nan_weight,
        nan_weight,
        true_label=ids,
        corrupted=[0, 0, 1],
    )
    write_weight_function(tmp_path / "weight_function.csv", [0.0, 1.0, 2.0], nan_weight)
    shown = plotted(tmp_path, figures, ALL_PLOTS)
    assert_accuracy_figure(shown["accuracy.png"], tmp_path, weights=True)
    assert len(lines_by_label(shown["accuracy.png"].axes[0])["test"].get_xdata()) == 5
    assert_histogram_figure(shown["weight_histogram.png"], tmp_path)
    assert_weighting_function_figure(shown["weighting_function.png"], tmp_path)
    assert list(shown["weighting_function.png"].axes[0].get_lines()[0].get_xdata()) == [0, 2]
