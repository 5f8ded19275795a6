"""Every shipped preset resolves, builds its data, model and method, and trains 2 steps."""

from __future__ import annotations

import importlib.util
import math
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
    if cfg.data.meta_source == "auto":  # no clean set: the first pseudo-meta set, by hand
        assert len(exp.data.meta_labels) == 0
        exp.pseudo_meta.replace(exp.data.train_images[:8], exp.data.train_labels[:8], 0)
    else:
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
    changed = noisy.train_labels != noisy.true_labels
    assert torch.equal(noisy.corrupted, changed)
    assert noisy.realized_noise_rate == float(changed.double().mean())
    # flip2 at 40 % moves each label with probability 0.4: within 4 binomial sd of it
    n = len(noisy.train_labels)
    assert abs(noisy.realized_noise_rate - 0.4) <= 4 * math.sqrt(0.4 * 0.6 / n)
    assert len(noisy.meta_labels) == 1000 and len(noisy.train_labels) == 600


DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "fmnist": "fashion-mnist"}
NOISE_NAMES = {"uniform": "uniform", "flip2": "flip2"}


MODELS = {"mlp": "mlp"}


def _expected_from_name(name: str) -> dict:
    """What a preset's name promises: dataset, corruption, method and (as a last part)
    another model than the dataset's default."""
    parts = name.split("-")
    model = MODELS.get(parts[-1]) if len(parts) > 3 else None
    if model is not None:
        parts = parts[:-1]
    method = "-".join(parts[3:]) or "mwnet"  # e.g. cifar10-asym-40-cmwnet-sl
    dataset, kind, amount = DATASETS[parts[0]], parts[1], int(parts[2])
    want = {"data.dataset": dataset, "method.name": method}
    if model is not None:
        want["model.name"] = model
    # label correction trains without a clean set, everything else with one
    want["data.meta_source"] = "auto" if method.endswith("-sl") else "clean"
    if kind == "lt":
        want |= {"data.imbalance_factor": float(amount), "data.noise": "none"}
    else:
        noise = f"asymmetric-{dataset}" if kind == "asym" else NOISE_NAMES[kind]
        want |= {"data.imbalance_factor": 1.0, "data.noise_rate": amount / 100}
        want["data.noise"] = noise if amount else "none"  # a 0 % preset: clean labels
    return want


@pytest.mark.parametrize("preset", [p for p in preset_names() if p != "clothing1m"])
def test_preset_settings_match_its_name(preset):
    from omegaconf import OmegaConf

    cfg = load_config(preset)
    for key, value in _expected_from_name(preset).items():
        assert OmegaConf.select(cfg, key) == value, f"{preset}: {key}"
    if cfg.method.name == "cmwnet" and cfg.data.imbalance_factor > 1:
        # the authors' long-tail protocol: plain CE for 80 % of the epochs, then CMW-Net
        assert cfg.method.warmup_epochs == int(0.8 * cfg.optim.epochs)
        assert cfg.optim.milestones[0] == cfg.method.warmup_epochs


def test_clothing1m_preset():
    cfg = load_config("clothing1m")
    assert cfg.data.dataset == "list" and cfg.method.name == "mwnet"
