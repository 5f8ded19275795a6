"""The user's own images: class folders and Clothing1M-style list files."""

from __future__ import annotations

import os

import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import mwnet.data.image_folder as folder_mod  # noqa: E402
from mwnet.data import DatasetError, load_image_folder, load_image_list  # noqa: E402

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _two_tone(path, w=40, h=20, mode="RGB"):
    """Left half red, right half blue (or two grey levels for mode L)."""
    img = Image.new("RGB", (w, h), RED)
    img.paste(Image.new("RGB", (w // 2, h), BLUE), (w // 2, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "pets"
    _two_tone(root / "dog" / "a.png")
    _two_tone(root / "dog" / "sub" / "b.jpg", w=30, h=30)
    _two_tone(root / "cat" / "c.png", w=20, h=40, mode="L")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_image_folder(tree, isolated_env):
    ds = load_image_folder(tree, 16)
    assert ds.classes == ["cat", "dog"] and ds.name == "pets"
    assert ds.images.shape == (3, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 1]
    wide = ds.images[1]  # dog/a.png: 40x20 -> 32x16 -> centre 16x16 keeps both halves
    assert wide[:, 8, 0].tolist() == list(RED) and wide[:, 8, 15].tolist() == list(BLUE)
    grey = ds.images[0]  # grayscale input comes back as 3 equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert len(list((isolated_env / "images").glob("*.pt"))) == 1


def test_image_folder_rectangular_size(tree):
    assert load_image_folder(tree, (8, 12), cache=False).images.shape == (3, 3, 8, 12)


def test_cache_is_used_and_invalidated(tree, monkeypatch, isolated_env):
    first = load_image_folder(tree, 16)
    calls = []
    real = folder_mod.decode_image
    monkeypatch.setattr(folder_mod, "decode_image", lambda *a: calls.append(a) or real(*a))
    again = load_image_folder(tree, 16)
    assert calls == [] and torch.equal(first.images, again.images)
    assert again.classes == first.classes and torch.equal(first.labels, again.labels)
    load_image_folder(tree, 12)  # another size: another cache entry
    assert len(calls) == 3
    _two_tone(tree / "dog" / "a.png", w=50, h=20)
    stamp = os.stat(tree / "dog" / "a.png").st_mtime_ns + 10**9
    os.utime(tree / "dog" / "a.png", ns=(stamp, stamp))
    load_image_folder(tree, 16)  # a changed file: rebuilt
    assert len(calls) == 6
    assert len(list((isolated_env / "images").glob("*.pt"))) == 3


def test_corrupt_cache_entry_is_rebuilt(tree, isolated_env):
    first = load_image_folder(tree, 16)
    (entry,) = (isolated_env / "images").glob("*.pt")
    entry.write_bytes(b"junk")
    assert torch.equal(load_image_folder(tree, 16).images, first.images)


def test_image_folder_errors(tmp_path, tree):
    with pytest.raises(DatasetError, match="image folder does not exist"):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subdirectories"):
        load_image_folder(tmp_path / "empty", 8)
    (tree / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png: cannot read image"):
        load_image_folder(tree, 8, cache=False)
    with pytest.raises(DatasetError, match="image size must be positive"):
        load_image_folder(tree, 0)


def test_image_list(tmp_path, tree):
    lst = tmp_path / "noisy_train.txt"
    lst.write_text("# Clothing1M style\ndog/a.png 3\n\ncat/c.png 0\ndog/sub/b.jpg 13\n")
    ds = load_image_list(lst, tree, 8)
    assert ds.labels.tolist() == [3, 0, 13] and ds.images.shape == (3, 3, 8, 8)
    assert ds.classes == [str(i) for i in range(14)] and ds.name == "noisy_train"
    named = load_image_list(lst, tree, 8, classes=[f"c{i}" for i in range(14)])
    assert named.classes[13] == "c13"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("dog/a.png 1\njustapath\n", r"list\.txt:2: expected 'relative/path label'"),
        ("dog/a.png 1\ncat/c.png two\n", r"list\.txt:2: label 'two' is not an integer"),
        ("\n\ndog/a.png -1\n", r"list\.txt:3: label -1 out of range"),
        ("dog/a.png 1\ndog/gone.png 1\n", r"list\.txt:2: image file .*gone\.png does not exist"),
        ("# nothing\n", r"list\.txt: no entries"),
    ],
)
def test_image_list_errors(tmp_path, tree, content, message):
    lst = tmp_path / "list.txt"
    lst.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_image_list(lst, tree, 8)


def test_image_list_label_beyond_classes(tmp_path, tree):
    lst = tmp_path / "list.txt"
    lst.write_text("dog/a.png 2\n")
    with pytest.raises(
        DatasetError, match=r"list\.txt:1: label 2 out of range \(expected \[0, 2\)"
    ):
        load_image_list(lst, tree, 8, classes=["a", "b"])


def test_image_list_bad_image_names_line(tmp_path, tree):
    (tree / "bad.jpg").write_bytes(b"nope")
    lst = tmp_path / "list.txt"
    lst.write_text("dog/a.png 0\nbad.jpg 1\n")
    with pytest.raises(DatasetError, match=r"bad\.jpg \(listed at .*list\.txt:2\): cannot read"):
        load_image_list(lst, tree, 8, cache=False)
