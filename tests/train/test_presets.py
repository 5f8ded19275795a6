"""Every shipped preset resolves, builds its data, model and method, and trains 2 steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from fake_data import write_cifar, write_idx, write_image_list

from mwnet.train.config import load_config, preset_names
from mwnet.train.experiment import build_experiment, prepare_data

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _data_root(preset: str, tmp_path: Path) -> Path:
    if preset.startswith("fmnist"):
        return write_idx(tmp_path / "fmnist", per_class=110)
    if preset.startswith("cifar100"):
        return write_cifar(tmp_path, classes=100, per_class=12)
    if preset.startswith("cifar10"):
        return write_cifar(tmp_path, classes=10, per_class=110)
    return write_image_list(tmp_path / "clothing")


def test_there_is_a_preset_for_every_paper_setting():
    names = set(preset_names())
    for ds in ("cifar10", "cifar100", "fmnist"):
        assert {f"{ds}-uniform-{r}" for r in (0, 40, 60)} <= names
        assert {f"{ds}-flip2-{r}" for r in (0, 20, 40)} <= names
        assert {f"{ds}-lt-{f}" for f in (200, 100, 50, 20, 10, 1)} <= names
    assert "clothing1m" in names


@pytest.mark.parametrize("preset", preset_names())
def test_preset_builds_and_trains_two_steps(preset, tmp_path):
    root = _data_root(preset, tmp_path)
    overrides = [f"data.root={root}", "data.batch_size=4", "data.meta_batch_size=4", "device=cpu"]
    if preset == "clothing1m":
        overrides.append("data.image_size=32")
    cfg = load_config(preset, overrides)
    if cfg.model.name.startswith("wrn"):
        # WRN-28-10 has 36.5M parameters: building it is the check; train a thin one.
        build_experiment(cfg)
        thin = ["model.name=wrn", "model.options.depth=10", "model.options.width=1"]
        cfg = load_config(preset, [*overrides, *thin])
    if preset == "clothing1m" and not HAS_TORCHVISION:
        with pytest.raises(ImportError, match="torchvision"):
            build_experiment(cfg)
        cfg = load_config(preset, [*overrides, "model.name=resnet32"])
    exp = build_experiment(cfg)
    assert exp.data.meta_labels.unique().numel() == exp.data.num_classes
    before = [p.detach().clone() for p in exp.model.parameters()]
    batches = iter(exp.train_batches)
    for _ in range(2):
        x, y, _ = next(batches)
        out = exp.method.step(x, y)
        assert torch.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, exp.model.parameters(), strict=True))


def test_long_tail_and_noise_are_applied(tmp_path):
    root = write_idx(tmp_path / "fmnist", per_class=160)
    lt = prepare_data(load_config("fmnist-lt-10", [f"data.root={root}"]))
    counts = torch.bincount(lt.train_labels, minlength=10)  # 160 - 10 meta images per class
    assert counts[0] == 150 and counts[-1] == 15 and (counts[:-1] >= counts[1:]).all()
    noisy = prepare_data(load_config("fmnist-flip2-40", [f"data.root={root}"]))
    assert 0.2 < noisy.realized_noise_rate < 0.6
    assert torch.equal(noisy.corrupted, noisy.train_labels != noisy.true_labels)
    assert len(noisy.meta_labels) == 1000 and len(noisy.train_labels) == 600
