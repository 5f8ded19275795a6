"""A user's own images: a trusted set in its own folder, never carved from the noisy
training labels; every per-sample file traceable to the image file."""

from __future__ import annotations

import csv

import pytest
import torch
from fake_data import write_image_folder

from mwnet.cli import main
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config
from mwnet.train.experiment import prepare_data


def _overrides(root, out, method: str, *extra: str) -> list[str]:
    return [
        "data.dataset=folder",
        f"data.root={root}",
        "data.image_size=12",
        "data.batch_size=8",
        "data.meta_batch_size=4",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        f"method.name={method}",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        *extra,
    ]


def test_a_trusted_folder_is_the_meta_set(tmp_path) -> None:
    root = write_image_folder(tmp_path / "images", classes=3, meta_classes=2)
    data = prepare_data(load_config(None, _overrides(root, tmp_path, "mwnet")))
    assert len(data.train_labels) == 24  # every training image trains
    assert len(data.meta_labels) == 4
    # the trusted folder has only two of the three classes: labelled by the training names
    assert data.meta_labels.tolist() == [0, 0, 1, 1]
    assert data.classes == ["class-a", "class-b", "class-c"]
    assert data.paths is not None and data.paths[0].endswith("train/class-a/0.png")


def test_without_a_trusted_set_a_meta_method_is_refused(tmp_path) -> None:
    root = write_image_folder(tmp_path / "images")
    with pytest.raises(ConfigError, match=r"images/meta/<class>.*data.meta_source=auto"):
        prepare_data(load_config(None, _overrides(root, tmp_path, "mwnet")))
    # a method that reads no meta set trains on every image; nothing is carved away
    data = prepare_data(load_config(None, _overrides(root, tmp_path, "ce")))
    assert len(data.train_labels) == 24 and len(data.meta_labels) == 0
    auto = _overrides(root, tmp_path, "mwnet", "data.meta_source=auto")
    assert len(prepare_data(load_config(None, auto)).train_labels) == 24


def test_meta_size_errors_name_the_key(tmp_path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=8)
    noisy = ("data.noise=uniform", "data.noise_rate=0.2")  # synthetic noise: carving is fine
    too_many = _overrides(root, tmp_path, "mwnet", *noisy, "data.meta_per_class=9")
    with pytest.raises(ConfigError, match=r"class 'class-a' has 8 .*data.meta_per_class"):
        prepare_data(load_config(None, too_many))
    everything = _overrides(root, tmp_path, "mwnet", *noisy, "data.meta_per_class=8")
    with pytest.raises(ConfigError, match="leaving none of it to train on"):
        prepare_data(load_config(None, everything))


def test_per_sample_files_carry_index_and_path(tmp_path, capsys) -> None:
    root = write_image_folder(tmp_path / "images", classes=3, meta_classes=3)
    assert main(["train", "--quiet", *_overrides(root, tmp_path, "mwnet", "name=own")]) == 0
    run_dir = tmp_path / "own"
    paths = (run_dir / "train_paths.txt").read_text().splitlines()
    assert len(paths) == 24 and all(p.endswith(".png") for p in paths)
    assert main(["issues", str(run_dir), "--top", "4"]) == 0
    with (run_dir / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == set(paths)
    for r in rows:
        assert paths[int(r["index"])] == r["path"]  # the index is the file's position
        assert r["path"].split("/")[-2] == r["given_class"]
    assert (run_dir / "label_issues.png").is_file()
    trainer = loop.resume(run_dir, quiet=True)
    assert torch.equal(trainer.exp.data.train_index, torch.arange(24))
