"""Training sets that cannot be learned as given, unreadable images and run names that
leave out_dir: each ends in one `mwnet: error: ...` line (exit 2) before the first batch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import tiny_folder_overrides, write_image_folder
from reliability import Row, covers, covers_each

from mwnet.cli import main
from mwnet.data.errors import DataError
from mwnet.train.config import ConfigError, TrainConfig, validate

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _folder_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--quiet", *tiny_folder_overrides(root, out, "name=run", *extra)]


def _error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("mwnet: error:") == 1, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("mwnet: error: ")]
    return line


def _one_class(root: Path) -> Path:
    write_image_folder(root, classes=1)
    return root


def _empty_class(root: Path) -> Path:
    write_image_folder(root, classes=3)
    for f in (root / "train" / "class-b").iterdir():
        f.unlink()
    (root / "train" / "class-b" / "notes.txt").write_text("the images are elsewhere")
    return root


def _list(root: Path, labels: list[int]) -> Path:
    lines = []
    for i, label in enumerate(labels):
        pixels = np.full((12, 12, 3), 40 * label, dtype=np.uint8)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text(lines[0] + "\n")
    return root


LIST_ARGS = ("data.dataset=list", "data.train_list=train.txt", "data.test_list=test.txt")

UNLEARNABLE = [
    Row(
        "bad input",
        "a training folder with a single class folder",
        "the training set (.../train) has a single class, 'class-a'",
        (_one_class, (), r"the training set \(.*train\) has a single class, 'class-a'"),
    ),
    Row(
        "bad input",
        "a training list labelling every image with one class",
        "the training set (data.train_list=train.txt) has a single class, '0'",
        (
            lambda r: _list(r, [0, 0, 0, 0]),
            LIST_ARGS,
            r"\(data.train_list=train.txt\) has a single class, '0'",
        ),
    ),
    Row(
        "bad input",
        "a training list whose labels skip a class",
        "the training set (data.train_list=train.txt) has no image of class(es) '1' out of 3",
        (
            lambda r: _list(r, [0, 2, 0, 2]),
            LIST_ARGS,
            r"has no image of class\(es\) '1' out of 3",
        ),
    ),
    Row(
        "bad input",
        "a training class folder with no images",
        "train/class-b: class folder without image files ...; it holds 1 other file(s)",
        (_empty_class, (), r"train/class-b: class folder without image files .*notes\.txt"),
    ),
]


@covers_each(UNLEARNABLE)
def test_unlearnable_training_sets_are_refused(tmp_path, capsys, row) -> None:
    make, extra, message = row.args
    root = make(tmp_path / "data")
    line = _error_line(capsys, main(_folder_argv(root, tmp_path / "runs", *extra)))
    assert re.search(message, line), line
    assert not (tmp_path / "runs" / "run" / "checkpoint.pt").exists()


EDITS_EMPTYING_A_CLASS = [
    Row(
        "bad input",
        "data.exclude listing every training image of a class",
        "data.exclude=... leaves class 'class-a' with no training samples",
        ("exclude", "\n".join(str(i) for i in range(8))),
    ),
    Row(
        "bad input",
        "data.relabel moving every training image of a class to another",
        "data.relabel=... leaves class 'class-a' with no training samples",
        ("relabel", "\n".join(f"{i} 1" for i in range(8))),
    ),
]


@covers_each(EDITS_EMPTYING_A_CLASS)
def test_label_edits_that_empty_a_class_are_refused(tmp_path, capsys, row) -> None:
    key, content = row.args
    root = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    (tmp_path / "edits.txt").write_text(content + "\n")
    argv = _folder_argv(root, tmp_path / "runs", f"data.{key}={tmp_path / 'edits.txt'}")
    line = _error_line(capsys, main(argv))
    assert f"data.{key}=" in line and "leaves class 'class-a' with no training samples" in line
    # one image of the class kept: it trains
    (tmp_path / "edits.txt").write_text("\n".join(content.splitlines()[1:]) + "\n")
    assert main([*argv[:-1], "name=kept", argv[-1]]) == 0, capsys.readouterr().err


@covers(
    "bad input",
    "an image in the training folder over Pillow's decompression-bomb limit",
    "big.png: image too large to decode safely (...); ... shrink it below that",
)
def test_decompression_bomb_in_a_run_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    root = write_image_folder(tmp_path / "data", classes=2)
    Image.new("RGB", (40, 40)).save(root / "train" / "class-a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    line = _error_line(capsys, main(_folder_argv(root, tmp_path / "runs")))
    assert "big.png: image too large to decode safely" in line


NAMES = [
    Row("bad input", "name=../../x", "name='../../x' is not a single directory name", ("../../x",)),
    Row("bad input", "name=a/b", "name='a/b' is not a single directory name", ("a/b",)),
    Row(
        "bad input",
        "name=/abs/run",
        "name='/abs/run' is not a single directory name",
        ("/abs/run",),
    ),
    Row("bad input", "name=..", "name='..' is not a single directory name", ("..",)),
]


@covers_each(NAMES)
def test_run_names_outside_out_dir_are_refused(tmp_path, capsys, row) -> None:
    (name,) = row.args
    root = write_image_folder(tmp_path / "data", classes=2)
    out = tmp_path / "a" / "runs"
    argv = [a for a in _folder_argv(root, out) if a != "name=run"] + [f"name={name}"]
    line = _error_line(capsys, main(argv))
    assert f"name={name!r} is not a single directory name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written anywhere


@covers("bad input", "name: '' in a config", "name='' is not a single directory name")
def test_empty_run_name_is_refused() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"name": ""})
    with pytest.raises(ConfigError, match="name='' is not a single directory name"):
        validate(cfg)


@covers("bad input", "mwnet compare --name ../x", "--name='../x' is not a single directory name")
def test_compare_name_outside_out_dir_is_refused(tmp_path, capsys) -> None:
    argv = ["compare", "--preset", "fmnist-flip2-40-mlp", "--name", "../x", f"out_dir={tmp_path}"]
    line = _error_line(capsys, main(argv))
    assert "--name='../x' is not a single directory name" in line


def test_a_plain_method_trains_on_own_images_without_a_trusted_set(tmp_path, capsys) -> None:
    """Nothing to carve a meta set from and none given: ce reads none, so it trains (and
    resumes) on every image rather than stopping for the missing meta stream."""
    from mwnet.train import loop

    root = write_image_folder(tmp_path / "data", classes=3)
    assert main(_folder_argv(root, tmp_path / "runs")) == 0, capsys.readouterr().err
    trainer = loop.resume(tmp_path / "runs" / "run", quiet=True)
    assert len(trainer.exp.data.train_labels) == 24 and len(trainer.exp.data.meta_labels) == 0


def test_an_unattended_exclusion_spares_a_class_it_would_empty(tmp_path) -> None:
    """With data.exclude_spares_classes (the suite's and compare's retraining), a class whose
    every sample is listed keeps them all, with a warning; the other listed samples go."""
    from mwnet.data.label_edits import LabelEdits, apply_label_edits

    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    source = torch.arange(10, 17)
    listed = torch.tensor([10, 11, 12, 15])  # all of class 0, one of 1, one of 2
    edits = LabelEdits(tmp_path / "flags.csv", listed, None, None)
    with pytest.warns(UserWarning, match="every training sample of class 'a'; kept them"):
        keep, new = apply_label_edits(
            source, labels, 3, exclude=edits, classes=["a", "b", "c"], spare_classes=True
        )
    assert keep.tolist() == [0, 1, 3, 4, 6]
    assert torch.equal(new, labels)
    with pytest.raises(DataError, match=r"or set data\.exclude_spares_classes=true"):
        apply_label_edits(source, labels, 3, exclude=edits, classes=["a", "b", "c"])
