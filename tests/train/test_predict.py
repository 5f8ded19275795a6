"""``mwnet predict``: a run's model applied to image files reads them as the run's training
read its own, so the run's own test images, saved as files, score exactly the test
accuracy the run reported; unreadable images are skipped and listed, never fatal."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_data import tiny_folder_overrides, tiny_idx_overrides, write_idx, write_image_folder
from PIL import Image
from reliability import covers

import mwnet
from mwnet.cli import main
from mwnet.data import to_float
from mwnet.data.image_folder import grey8
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.evaluate import predict

ROOT = Path(__file__).resolve().parents[2]


def _train(overrides: list[str], cache: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))  # decoded folders are cached: not in ~
        mp.setattr(loop, "plot_run", lambda run_dir: [])  # the plots are not about this
        trainer, run_dir = loop.start(load_config(None, overrides), quiet=True)
        trainer.fit()
    return trainer, run_dir


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    """A finished run on fake Fashion-MNIST, its data root, and its test split written as
    a class-per-folder tree of PNG files (class names with "/" written "_"), image i of
    the split as <class>/<i>.png."""
    base = tmp_path_factory.mktemp("fmnist")
    root = write_idx(base / "data", per_class=20)
    trainer, run_dir = _train(tiny_idx_overrides(root, base / "runs", "name=run"), base / "cache")
    d = trainer.exp.data
    tree = base / "test-images"
    for i, (image, label) in enumerate(zip(d.test_images, d.test_labels.tolist(), strict=True)):
        folder = tree / d.classes[label].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")  # 8-bit greyscale
    return trainer, run_dir, root, tree


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _accuracy_line(out: str) -> tuple[str, int, int]:
    found = re.search(r"accuracy (\d+\.\d\d) % \((\d+) of (\d+) labelled images\)", out)
    assert found, out
    return found.group(1), int(found.group(2)), int(found.group(3))


def _run_predictions(trainer) -> torch.Tensor:
    e, d = trainer.exp, trainer.exp.data
    pred, _ = predict(e.model, d.test_images, d.test_labels, e.normalize, e.device)
    return pred


def test_the_runs_test_images_as_files_score_its_test_accuracy(fmnist_run, tmp_path, capsys):
    """The key check: files in, the run's own number out."""
    trainer, run_dir, _, tree = fmnist_run
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run_dir), str(tree), "-o", str(out), "--quiet"]) == 0
    shown, right, counted = _accuracy_line(capsys.readouterr().out)
    last = loop.read_jsonl(run_dir / loop.METRICS)[-1]["test_acc"]
    summary = loop.read_json(run_dir / "summary.json")
    d = trainer.exp.data
    pred = _run_predictions(trainer)
    assert (shown, counted) == (f"{last:.2f}", len(d.test_labels))
    assert float(shown) == summary["last_test_acc"]
    assert right == int((pred == d.test_labels).sum())
    assert 50 < last < 100  # the run learned something, and not everything
    rows = _read_csv(out)
    assert len(rows) == len(d.test_labels)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # sorted paths
    for row in rows:
        i = int(Path(row["path"]).stem)
        assert row["predicted"] == d.classes[int(pred[i])]
        assert row["label"] == d.classes[int(d.test_labels[i])]  # "T-shirt_top" matched too
        assert row["class_1"] == row["predicted"] and row["probability_1"] == row["probability"]
        assert float(row["probability_1"]) >= float(row["probability_2"])


def test_the_probabilities_are_the_trained_models(fmnist_run, tmp_path, capsys):
    trainer, run_dir, _, tree = fmnist_run
    out = tmp_path / "p.csv"
    args = ["predict", str(run_dir), str(tree), "-o", str(out), "--quiet", "--top-k", "10"]
    assert main(args) == 0
    rows = _read_csv(out)
    e, d = trainer.exp, trainer.exp.data
    with torch.no_grad():
        e.model.eval()
        probs = torch.softmax(e.model(to_float(d.test_images, e.normalize)), 1)
    for row in rows:
        i = int(Path(row["path"]).stem)
        written = {row[f"class_{r}"]: float(row[f"probability_{r}"]) for r in range(1, 11)}
        expected = {d.classes[c]: float(probs[i, c]) for c in range(10)}
        # six decimals written: within half a unit of the sixth
        assert all(abs(written[c] - expected[c]) <= 5e-7 + 1e-12 for c in expected)
    # planted bug: without the run's normalisation the probabilities move far more
    model = mwnet.load_model(run_dir)
    bare = type(model)({**model.fields, "input": {**model.fields["input"], "normalize": None}}, "")
    moved = (bare.predict_proba(d.test_images) - probs).abs().max()
    assert moved > 1e-3


def test_a_dataset_split_scores_the_same(fmnist_run, capsys):
    trainer, run_dir, root, _ = fmnist_run
    args = ["predict", str(run_dir / "model.pt"), "fashion-mnist:test", "--data-root", str(root)]
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))  # the CSV on standard output
    assert list(rows[0])[:3] == ["index", "predicted", "probability"]
    shown, _, counted = _accuracy_line(captured.err)
    assert shown == f"{loop.read_jsonl(run_dir / loop.METRICS)[-1]['test_acc']:.2f}"
    assert counted == len(rows) == len(trainer.exp.data.test_labels)


@covers(
    "damaged files",
    "mwnet predict on a folder holding a broken image, and one of another size than a "
    "Fashion-MNIST model takes",
    "both skipped, not fatal: 'warning: skipped 2 image(s) that could not be read (...)', each "
    "listed with its reason in OUTPUT.skipped.txt; the others predicted",
)
def test_unreadable_images_are_skipped_and_listed(fmnist_run, tmp_path, capsys):
    _, run_dir, _, tree = fmnist_run
    folder = tmp_path / "mixed"
    for i, name in enumerate(sorted(p.name for p in (tree / "Bag").iterdir())):
        (folder / "Bag").mkdir(parents=True, exist_ok=True)
        (folder / "Bag" / name).write_bytes((tree / "Bag" / name).read_bytes())
        if i == 1:
            break
    (folder / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "big.png")
    (folder / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out.csv"
    stale = tmp_path / "out.skipped.txt"
    assert main(["predict", str(run_dir), str(folder), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "predicting" in captured.err  # the progress bar, on stderr
    assert "predicted 2 image(s)" in captured.out
    warning = r"warning: skipped 2 image\(s\) that could not be read \(.*broken\.png"
    assert re.search(warning, captured.err)
    listed = dict(line.split("\t") for line in stale.read_text().splitlines())
    assert "cannot read image" in listed[str(folder / "Bag" / "broken.png")]
    assert "28x28" in listed[str(folder / "big.png")]  # an IDX model never resizes
    assert len(_read_csv(out)) == 2
    _, _, counted = _accuracy_line(captured.out)
    assert counted == 2  # big.png is unlabelled anyway; the skipped ones are not counted
    # a later pass with nothing skipped removes the stale list of this output
    (folder / "Bag" / "broken.png").unlink()
    (folder / "big.png").unlink()
    assert main(["predict", str(run_dir), str(folder), "-o", str(out), "--quiet"]) == 0
    assert not stale.exists()


@covers(
    "bad input",
    "mwnet predict on a list file with a label beyond the model's classes, or listing a file "
    "that does not exist",
    "'LIST:1: label 10 out of range: the model has 10 classes'; a missing file is skipped "
    "and listed",
)
def test_a_list_file_with_and_without_labels(fmnist_run, tmp_path, capsys):
    trainer, run_dir, _, tree = fmnist_run
    files = sorted(tree.rglob("*.png"))[:3]
    d = trainer.exp.data
    labels = [int(d.test_labels[int(f.stem)]) for f in files]
    lines = [
        "# comment",
        f"{files[0].relative_to(tree)} {labels[0]}",
        f"{files[1].relative_to(tree)}",  # no label
        f"{files[2].relative_to(tree)} {labels[2]}",
        "gone/missing.png 3",
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "list.csv"
    args = ["predict", str(run_dir), str(listing), "--image-root", str(tree), "-o", str(out)]
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    rows = _read_csv(out)
    assert [r["label"] for r in rows] == [d.classes[labels[0]], "", d.classes[labels[2]]]
    assert _accuracy_line(captured.out)[2] == 2
    assert "gone/missing.png" in captured.err
    assert "does not exist" in (tmp_path / "list.skipped.txt").read_text()
    listing.write_text(f"{files[0].relative_to(tree)} 10\n")  # 10 classes: 0..9
    assert main([*args, "--quiet"]) == 2
    assert f"{listing}:1: label 10 out of range" in capsys.readouterr().err


def test_one_image_to_standard_output(fmnist_run, capsys):
    _, run_dir, _, tree = fmnist_run
    image = sorted(tree.rglob("*.png"))[0]
    assert main(["predict", str(run_dir), str(image), "--top-k", "0", "--quiet"]) == 0
    captured = capsys.readouterr()
    header, row = captured.out.strip().splitlines()
    assert header == "path,predicted,probability"  # no top-k, no label column
    assert row.startswith(f"{image},")
    assert "accuracy" not in captured.err


@covers(
    "bad input",
    "mwnet predict on INPUTS that name nothing: no such path, an unknown dataset, an empty folder",
    "one line: 'no such file or folder ...', 'nor a split of a dataset mwnet reads', "
    "'no image files under it'",
)
def test_inputs_that_name_nothing(fmnist_run, tmp_path, capsys):
    _, run_dir, _, _ = fmnist_run
    assert main(["predict", str(run_dir), str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "fmnist:test"]) == 2
    assert "nor a split of a dataset mwnet reads" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run_dir), str(tmp_path / "empty")]) == 2
    assert "no image files under it" in capsys.readouterr().err


def test_an_own_images_run_reads_files_as_its_training_did(tmp_path, capsys):
    """A folder run at data.image_size=8 on 12-pixel RGB images: the files are resized and
    cropped by the training's own decoder, pixel for pixel."""
    root = write_image_folder(tmp_path / "images", classes=3, per_class=8)
    overrides = tiny_folder_overrides(
        root, tmp_path / "runs", "name=own", "data.image_size=8", "optim.epochs=3"
    )
    trainer, run_dir = _train(overrides, tmp_path / "cache")
    model = mwnet.load_model(run_dir)
    assert model.input.resize and model.input.channels == 3
    d = trainer.exp.data
    files = sorted((root / "test").rglob("*.png"))  # the order the folder reader keeps
    read = model.read_images(files)
    assert torch.equal(read, d.test_images)
    # planted bug: a plain resize of the whole image (no cover-and-crop, torch's filter)
    # gives other pixels, so the equality above can fail
    raw = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    squeezed = F.interpolate(raw.float(), size=(8, 8), mode="bilinear", antialias=True)
    assert not torch.equal(squeezed.round().to(torch.uint8), d.test_images)
    out = tmp_path / "own.csv"
    assert main(["predict", str(run_dir), str(root / "test"), "-o", str(out), "--quiet"]) == 0
    shown, _, counted = _accuracy_line(capsys.readouterr().out)
    assert shown == f"{loop.read_jsonl(run_dir / loop.METRICS)[-1]['test_acc']:.2f}"
    assert counted == len(d.test_labels)


def test_greyscale_is_pillows_rule():
    """grey8 against Pillow's own convert("L") on random pixels, and grey stays exact."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).convert("L"))
    ours = grey8(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0, 0].numpy()
    assert np.array_equal(ours, expected)
    grey = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(grey8(grey.expand(1, 3, 16, 16)), grey)
    # planted bug: the mean of the channels, a common shortcut, is not Pillow's rule
    mean = torch.from_numpy(pixels).float().mean(2).round().to(torch.uint8).numpy()
    assert not np.array_equal(mean, expected)


def test_the_readme_example_runs(fmnist_run, tmp_path, monkeypatch, capsys):
    """The README's "Using the trained model" Python block, in a folder holding the run
    as runs/my-run and two of its test images as a.png and b.png."""
    trainer, run_dir, _, tree = fmnist_run
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using the trained model", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "my-run").symlink_to(run_dir)
    files = sorted(tree.rglob("*.png"))[:2]
    for name, file in zip(("a.png", "b.png"), files, strict=True):
        (tmp_path / name).write_bytes(file.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    pred = _run_predictions(trainer)
    expected = [trainer.exp.data.classes[int(pred[int(f.stem)])] for f in files]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(expected)


def test_export_writes_the_archive_the_export_module_makes(fmnist_run, tmp_path, capsys):
    """The option's wiring: what the archive holds is tested in tests/run/test_model_file.py,
    in a process without mwnet."""
    import mwnet.predict.export as export

    _, run_dir, _, tree = fmnist_run
    made = []

    def fake_export(model, path):
        made.append((model.path, path))
        return path

    archive = tmp_path / "model.pt2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "export_model", fake_export)
        assert main(["predict", str(run_dir), "--export", str(archive)]) == 0
        assert made == [(run_dir / "model.pt", archive)]
        assert f"exported {archive}" in capsys.readouterr().err
        out = tmp_path / "both.csv"  # with INPUTS it predicts as well
        both = [str(tree), "--export", str(archive), "-o", str(out), "--quiet"]
        assert main(["predict", str(run_dir), *both]) == 0
        assert len(made) == 2 and out.is_file()
    assert main(["predict", str(run_dir)]) == 2  # neither INPUTS nor --export
    assert "give INPUTS to predict" in capsys.readouterr().err
