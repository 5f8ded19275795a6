"""plot_run: one PNG per plot the run directory's files allow, written atomically."""

from __future__ import annotations

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


def write_metrics(run_dir: Path, epochs: int = 5, weights: bool = True, scale: float = 1.0):
    for epoch in range(1, epochs + 1):
        append_jsonl(run_dir / "metrics.jsonl", {"step": epoch * 10, "train_loss": 1.0 / epoch})
        record = {"epoch": epoch, "test_acc": scale * (0.5 + 0.08 * epoch)}
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
        run_dir / "sample_weights.csv", np.arange(n), label, true_label, corrupted, loss, weight
    )


def assert_pngs(paths: list[Path], names: list[str]) -> None:
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 10_000, f"{path.name} is suspiciously small"


def test_full_run_directory_gives_all_plots(tmp_path: Path) -> None:
    write_metrics(tmp_path)
    write_samples(tmp_path)
    losses = np.linspace(0.0, 8.0, 100)
    write_weight_function(tmp_path / "weight_function.csv", losses, np.exp(-losses / 2))
    written = plot_run(tmp_path)
    assert_pngs(written, ALL_PLOTS)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_metrics_only_gives_only_accuracy(tmp_path: Path) -> None:
    write_metrics(tmp_path, weights=False)
    assert_pngs(plot_run(tmp_path), ["accuracy.png"])


@pytest.mark.parametrize("scale", [1.0, 100.0], ids=["fraction", "percent"])
def test_accuracy_in_fractions_or_percent(tmp_path: Path, scale: float) -> None:
    write_metrics(tmp_path, scale=scale)
    assert_pngs(plot_run(tmp_path), ["accuracy.png"])


def test_uncorrupted_run_gives_one_histogram(tmp_path: Path) -> None:
    write_samples(tmp_path, corrupted_fraction=0.0)
    assert_pngs(plot_run(tmp_path), ["weight_histogram.png"])


def test_nothing_to_draw(tmp_path: Path) -> None:
    assert plot_run(tmp_path) == []
    append_jsonl(tmp_path / "metrics.jsonl", {"step": 10, "train_loss": 2.0})
    write_weight_function(tmp_path / "weight_function.csv", [], [])
    assert plot_run(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "weight_function.csv"]


def test_replotting_replaces_the_files(tmp_path: Path) -> None:
    write_metrics(tmp_path, epochs=2)
    (first,) = plot_run(tmp_path)
    before = first.read_bytes()
    write_metrics(tmp_path, epochs=8)
    (second,) = plot_run(tmp_path)
    assert second == first and second.read_bytes() != before


def test_diverged_run_with_nan_values_still_plots(tmp_path: Path) -> None:
    write_metrics(tmp_path)
    append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 6, "test_acc": float("nan")})
    nan_weight = np.array([0.5, np.nan, 0.7])
    ids = np.arange(3)
    write_sample_weights(
        tmp_path / "sample_weights.csv", ids, ids, ids, [0, 0, 1], nan_weight, nan_weight
    )
    write_weight_function(tmp_path / "weight_function.csv", [0.0, 1.0, 2.0], nan_weight)
    assert_pngs(plot_run(tmp_path), ALL_PLOTS)
