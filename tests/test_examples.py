"""The examples run as shipped, and what they print shows what they claim."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"\d+\.\d+", line)]


def test_quickstart_separates_wrong_labels(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    weights, accuracy = capsys.readouterr().out.strip().splitlines()
    clean, wrong = _numbers(weights)
    assert wrong < 0.5 * clean, weights
    assert _numbers(accuracy)[0] > 0.9, accuracy


def test_class_aware_example_learns_and_its_frozen_net_beats_plain_training(capsys):
    runpy.run_path(str(EXAMPLES / "class_aware.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "classes per cluster (largest first): [2, 1, 1]"
    clean, wrong = _numbers(lines[1])
    assert wrong < 0.5 * clean, lines[1]
    (frozen,), (plain,) = _numbers(lines[2]), _numbers(lines[3])
    assert frozen > plain + 0.05, lines[2:]


def test_custom_loop_trains_records_and_finds_the_wrong_labels(capsys):
    runpy.run_path(str(EXAMPLES / "custom_loop.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:8]] == [f"epoch {e}" for e in range(1, 9)]
    assert _numbers(lines[7])[0] > 0.9, lines[7]
    clean, wrong = _numbers(lines[8])
    assert wrong < 0.6 * clean, lines[8]
    estimated, true, precision = _numbers(lines[9])
    assert abs(estimated - true) < 0.05 and precision > 0.85, lines[9]


def test_make_image_folder_writes_the_layout_the_folder_source_reads(tmp_path, monkeypatch, capsys):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "fake_data", Path(__file__).parent / "train" / "fake_data.py"
    )
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    raw = fake.write_idx(tmp_path / "fmnist", per_class=12, test_per_class=3)
    out = tmp_path / "images"
    argv = ["make_image_folder.py", str(out), "--train", "8", "--meta", "2", "--test", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--noise", "0.5", "--data-root", str(raw)])
    runpy.run_path(str(EXAMPLES / "make_image_folder.py"), run_name="__main__")
    wrong = int(re.search(r"\((\d+) under a wrong class\)", capsys.readouterr().out).group(1))
    from mwnet.data import load_dataset, load_image_folder

    train = load_image_folder(out / "train", 28, cache=False)
    meta = load_image_folder(out / "meta", 28, cache=False, classes=train.classes)
    assert len(train) == 80 and len(meta) == 20 and len(train.classes) == 10
    assert "T-shirt_top" in train.classes  # a class name usable as a folder name
    # the images are Fashion-MNIST's, filed under their own class except the wrong ones
    source = load_dataset("fashion-mnist", "train", root=str(raw), download=False)
    pairs = zip(source.images, source.labels, strict=True)
    label_of = {bytes(img[0].numpy()): int(y) for img, y in pairs}
    names = [c.replace("/", "_") for c in source.classes]  # folders sort by name

    def true_class(img) -> str:
        return names[label_of[bytes(img[0].numpy())]]

    filed = [train.classes[int(y)] for y in train.labels]
    misfiled = sum(true_class(img) != c for img, c in zip(train.images, filed, strict=True))
    assert misfiled == wrong and 0 < wrong < 80
    assert [true_class(img) for img in meta.images] == [meta.classes[int(y)] for y in meta.labels]


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_quickstart_separates_wrong_labels(capsys, tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # whatever Lightning might write lands here
    runpy.run_path(str(EXAMPLES / "lightning_quickstart.py"), run_name="__main__")
    weights, accuracy = capsys.readouterr().out.strip().splitlines()[-2:]
    clean, wrong = _numbers(weights)
    assert wrong < 0.5 * clean, weights
    assert _numbers(accuracy)[0] > 0.9, accuracy
    assert list(tmp_path.iterdir()) == []  # the example leaves no files behind


def test_table_embeddings_example_flags_the_wrong_rows_by_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["table_embeddings.py", str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLES / "table_embeddings.py"), run_name="__main__")
    assert done.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[")]
    rows, wrong = (
        int(v) for v in re.search(r"\((\d+) rows, .*, (\d+) labels wrong", lines[0]).groups()
    )
    methods = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ")]
    assert methods[1:] == ["ce", "mwnet", "ce, mwnet's flagged labels removed"]
    top = next(line for line in lines if line.startswith("most suspicious rows: "))
    assert re.findall(r"item-\d{5}", top) and int(re.search(r"\((\d) of 5", top)[1]) >= 4, top
    found = next(line for line in lines if line.startswith("flagged rows that were"))
    precision, recall = _numbers(found)
    # flagging at random would be right at the noise rate (wrong / rows, about 0.3)
    assert precision > 2 * wrong / rows and recall > 0.8, found
    accuracy = _numbers(lines[-1])
    assert len(accuracy) == 3 and min(accuracy) > 50, lines[-1]
    with (tmp_path / "compare" / "mwnet" / "label_issues.csv").open() as f:
        assert f.readline().startswith("index,id,given_label")


def test_sklearn_quickstart_beats_cross_entropy_and_finds_the_wrong_labels(capsys):
    pytest.importorskip("sklearn")
    runpy.run_path(str(EXAMPLES / "sklearn_quickstart.py"), run_name="__main__")
    ce, mw, weights, flagged, likely = capsys.readouterr().out.strip().splitlines()
    assert _numbers(mw)[0] > _numbers(ce)[0] + 0.1 and _numbers(mw)[0] > 0.85, (ce, mw)
    clean, wrong = _numbers(weights)
    assert wrong < 0.5 * clean, weights
    estimated, true, precision = _numbers(flagged)
    assert abs(estimated - true) < 0.05 and precision > 0.85, flagged
    assert _numbers(likely)[0] > 0.85, likely
