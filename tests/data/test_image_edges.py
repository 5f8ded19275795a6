"""Images that are not plain 8-bit RGB, and class folders that are not plain trees.

Each decoded pixel is compared with the value the documented rule gives, computed here
from the rule (16-bit: ``round(v * 255 / 65535)``; float: ``round(v * 255)``; alpha:
``round(a * c + (1 - a) * 255)`` on white), not read back from mwnet's own conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import Row, covers, covers_each

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import mwnet.data.image_folder as folder_mod  # noqa: E402
from mwnet.data import DatasetError, load_image_folder  # noqa: E402
from mwnet.data.image_folder import decode_image  # noqa: E402

WHITE = 255


def _pixels(path: Path, w: int, h: int = 1) -> list[list[int]]:
    """The decoded image at its own size (no interpolation), as (R, G, B) per pixel of row 0."""
    return decode_image(path, (h, w))[:, 0, :].T.tolist()


def _sixteen_bit(path: Path, values: list[int], mode: str) -> Path:
    array = np.array([values], dtype={"I;16": "<u2", "I;16B": ">u2"}[mode])
    Image.frombytes(mode, (len(values), 1), array.tobytes()).save(path)
    return path


SIXTEEN = [0, 1000, 32767, 65535]
SIXTEEN_EXPECTED = [round(v * 255 / 65535) for v in SIXTEEN]  # 0, 4, 127, 255


def _grey(values: list[int]) -> list[list[int]]:
    return [[v, v, v] for v in values]


HIGH_BIT_DEPTH = [
    Row(
        "wrong data",
        "a 16-bit greyscale PNG (mode I;16)",
        "0..65535 scaled to 0..255, not clipped to white",
        ("png", lambda p: _sixteen_bit(p, SIXTEEN, "I;16"), _grey(SIXTEEN_EXPECTED)),
    ),
    Row(
        "wrong data",
        "a 16-bit big-endian greyscale TIFF (mode I;16B)",
        "0..65535 scaled to 0..255, not clipped to white",
        ("tif", lambda p: _sixteen_bit(p, SIXTEEN, "I;16B"), _grey(SIXTEEN_EXPECTED)),
    ),
    Row(
        "wrong data",
        "a 32-bit integer greyscale TIFF (mode I) holding 16-bit values",
        "read as 16-bit: 0..65535 scaled to 0..255",
        (
            "tif",
            lambda p: Image.fromarray(np.array([SIXTEEN], dtype=np.int32)).save(p),
            _grey(SIXTEEN_EXPECTED),
        ),
    ),
    Row(
        "wrong data",
        "a floating-point TIFF (mode F) with values in [0, 1]",
        "intensities scaled by 255, not black",
        (
            "tif",
            lambda p: Image.fromarray(np.array([[0.0, 0.25, 0.2, 1.0]], np.float32)).save(p),
            _grey([0, round(0.25 * 255), round(0.2 * 255), 255]),
        ),
    ),
]


@covers_each(HIGH_BIT_DEPTH)
def test_high_bit_depth_images_are_scaled(tmp_path, row) -> None:
    ext, write, expected = row.args
    path = tmp_path / f"image.{ext}"
    write(path)
    assert _pixels(path, len(expected)) == expected


def _float_tiff(path: Path, values: list[float]) -> None:
    Image.fromarray(np.array([values], np.float32)).save(path)


UNREADABLE_PIXELS = [
    Row(
        "bad input",
        "a floating-point image with NaN pixels",
        "image.tif: floating-point image with NaN or infinite pixel values",
        (lambda p: _float_tiff(p, [0.0, float("nan")]), "NaN or infinite"),
    ),
    Row(
        "bad input",
        "a floating-point image with values outside [0, 1]",
        "image.tif: floating-point pixel values in [0, 1000] ... rescale it to [0, 1]",
        (lambda p: _float_tiff(p, [0.0, 1000.0]), r"values in \[0, 1000\].*rescale"),
    ),
    Row(
        "bad input",
        "a 32-bit integer image with values beyond 16 bits",
        "image.tif: integer pixel values in [0, 70000], outside the 16-bit range",
        (
            lambda p: Image.fromarray(np.array([[0, 70000]], np.int32)).save(p),
            r"\[0, 70000\], outside the 16-bit range",
        ),
    ),
]


@covers_each(UNREADABLE_PIXELS)
def test_pixels_without_a_meaning_are_refused(tmp_path, row) -> None:
    write, message = row.args
    path = tmp_path / "image.tif"
    write(path)
    with pytest.raises(DatasetError, match=rf"image\.tif: .*{message}") as err:
        decode_image(path, (1, 2))
    assert "\n" not in str(err.value)


def _over_white(colour: tuple[int, ...], alpha: int) -> list[int]:
    a = alpha / 255
    return [round(a * c + (1 - a) * WHITE) for c in colour]


def _rgba(path: Path) -> None:
    img = Image.new("RGBA", (4, 1))
    img.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 255, 128), (0, 200, 0, 64)])
    img.save(path)


def _la(path: Path) -> None:
    img = Image.new("LA", (3, 1))
    img.putdata([(0, 255), (0, 0), (100, 128)])
    img.save(path)


def _palette(path: Path) -> None:
    """Index 2 (black) is the transparent colour."""
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(path, transparency=2)


TRANSPARENT = [
    Row(
        "wrong data",
        "an RGBA image with transparent pixels",
        "composited on white, not the colour hidden under them",
        (
            "png",
            _rgba,
            [
                [255, 0, 0],
                [WHITE] * 3,
                _over_white((0, 0, 255), 128),
                _over_white((0, 200, 0), 64),
            ],
        ),
    ),
    Row(
        "wrong data",
        "a greyscale image with alpha (mode LA)",
        "composited on white",
        ("png", _la, [[0, 0, 0], [WHITE] * 3, _over_white((100, 100, 100), 128)]),
    ),
    Row(
        "wrong data",
        "a palette PNG with a transparent colour",
        "transparent pixels white, not the palette entry's black",
        ("png", _palette, [[255, 0, 0], [0, 255, 0], [WHITE] * 3]),
    ),
    Row(
        "wrong data",
        "a GIF with a transparent colour",
        "transparent pixels white, not the palette entry's black",
        ("gif", _palette, [[255, 0, 0], [0, 255, 0], [WHITE] * 3]),
    ),
]


@covers_each(TRANSPARENT)
def test_transparency_is_composited_on_white(tmp_path, row) -> None:
    ext, write, expected = row.args
    path = tmp_path / f"image.{ext}"
    write(path)
    got = _pixels(path, len(expected))
    assert np.abs(np.array(got) - np.array(expected)).max() <= 1, (got, expected)


def _cmyk(path: Path) -> None:
    img = Image.new("CMYK", (4, 1))
    img.putdata([(0, 0, 0, 0), (0, 255, 255, 0), (255, 0, 255, 0), (0, 0, 0, 255)])
    img.save(path)


def _bilevel(path: Path) -> None:
    img = Image.new("1", (4, 1))
    img.putdata([0, 255, 255, 0])
    img.save(path)


OTHER_MODES = [
    Row(
        "wrong data",
        "a CMYK TIFF",
        "white, red, green and black as in RGB",
        ("tif", _cmyk, [[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 0]]),
    ),
    Row(
        "wrong data",
        "a bilevel image (mode 1)",
        "black 0 and white 255",
        ("png", _bilevel, [[0, 0, 0], [255, 255, 255], [255, 255, 255], [0, 0, 0]]),
    ),
]


@covers_each(OTHER_MODES)
def test_other_modes_decode_to_their_colours(tmp_path, row) -> None:
    ext, write, expected = row.args
    path = tmp_path / f"image.{ext}"
    write(path)
    assert _pixels(path, len(expected)) == expected


@covers(
    "wrong data",
    "a photo stored sideways with an EXIF orientation tag",
    "turned upright, as every viewer shows it",
)
def test_exif_orientation_is_applied(tmp_path) -> None:
    img = Image.new("RGB", (2, 1))
    img.putdata([(255, 0, 0), (0, 0, 255)])  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF: row 0 is the visual right side, column 0 the visual top
    img.save(tmp_path / "photo.png", exif=exif)
    upright = decode_image(tmp_path / "photo.png", (2, 1))  # shown 1 wide, 2 high
    assert upright[:, 0, 0].tolist() == [255, 0, 0]  # top: stored column 0
    assert upright[:, 1, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("side", [12, 20], ids=["over the limit", "over twice the limit"])
@covers(
    "bad input",
    "an image over Pillow's decompression-bomb limit",
    "big.png: image too large to decode safely ... shrink it below that",
)
def test_decompression_bomb_is_one_error_line(tmp_path, monkeypatch, side) -> None:
    # Pillow warns between its limit and twice it, and raises beyond: both are refused
    Image.new("RGB", (side, side)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetError, match=r"big\.png: image too large to decode safely") as err:
        decode_image(tmp_path / "big.png", 8)
    assert "100 pixels" in str(err.value) and "\n" not in str(err.value)


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    _image(root / "cat" / "a.png", (10, 10, 10))
    _image(root / "dog" / "b.png", (20, 20, 20))
    return root


@covers(
    "wrong data",
    "images in a symlinked subfolder of a class folder",
    "read like the others; a link back to a parent neither loops nor counts twice",
)
def test_symlinked_subfolders_are_followed(tmp_path, tree) -> None:
    elsewhere = tmp_path / "elsewhere"
    _image(elsewhere / "c.png", (30, 30, 30))
    _image(elsewhere / "deeper" / "d.png", (40, 40, 40))
    (tree / "dog" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (tree / "dog" / "loop").symlink_to(tree / "dog", target_is_directory=True)
    (tree / "dog" / "again").symlink_to(elsewhere, target_is_directory=True)
    ds = load_image_folder(tree, 4, cache=False)
    assert ds.labels.tolist() == [0, 1, 1, 1]
    assert sorted(int(img[0, 0, 0]) for img in ds.images[1:]) == [20, 30, 40]
    assert [Path(p).name for p in ds.paths] == ["a.png", "c.png", "d.png", "b.png"]


@covers(
    "bad input",
    "an image name in a class folder whose symbolic link leads nowhere",
    "gone.png: symbolic link to ..., which does not exist",
)
def test_dangling_image_link_is_an_error(tmp_path, tree) -> None:
    (tree / "dog" / "gone.png").symlink_to(tmp_path / "nothing.png")
    with pytest.raises(DatasetError, match=r"gone\.png: symbolic link to .*nothing\.png"):
        load_image_folder(tree, 4, cache=False)


@covers(
    "wrong data",
    "hidden files and folders in a class folder (.thumbnails, macOS ._x.png)",
    "skipped, like hidden class folders: no duplicate thumbnails, no decode error",
)
def test_hidden_entries_are_skipped(tree) -> None:
    _image(tree / "dog" / ".thumbnails" / "b.png", (99, 99, 99))
    (tree / "dog" / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = load_image_folder(tree, 4, cache=False)
    assert ds.labels.tolist() == [0, 1] and int(ds.images[1, 0, 0, 0]) == 20


@covers(
    "bad input",
    "a class folder with no image files (only other files, or empty)",
    "dog: class folder without image files ...; it holds 1 other file(s), e.g. x.heic",
)
def test_class_folder_without_images_is_an_error(tree) -> None:
    for f in (tree / "dog").iterdir():
        f.unlink()
    (tree / "dog" / "x.heic").write_bytes(b"not read here")
    with pytest.raises(
        DatasetError, match=r"dog: class folder without image files .*1 other file.*x\.heic"
    ):
        load_image_folder(tree, 4, cache=False)
    (tree / "dog" / "x.heic").unlink()
    with pytest.raises(DatasetError, match=r"dog: class folder without image files"):
        load_image_folder(tree, 4, cache=False)


@covers(
    "damaged files",
    "a subfolder of a class folder that cannot be listed",
    "sub: cannot list folder: Permission denied",
)
def test_unlistable_subfolder_is_an_error(tree, monkeypatch) -> None:
    _image(tree / "dog" / "sub" / "c.png", (30, 30, 30))
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match=r"sub: cannot list folder: Permission denied"):
        load_image_folder(tree, 4, cache=False)


@covers(
    "stale results",
    "images cached by an older decoding rule",
    "decoded again, not served from the cache",
)
def test_cache_is_keyed_by_the_decoding_rule(tree, monkeypatch) -> None:
    load_image_folder(tree, 4)
    calls = []
    real = folder_mod.decode_image
    monkeypatch.setattr(folder_mod, "decode_image", lambda *a: calls.append(a) or real(*a))
    load_image_folder(tree, 4)
    assert calls == []  # the same rule: served from the cache
    monkeypatch.setattr(folder_mod, "DECODER_VERSION", folder_mod.DECODER_VERSION - 1)
    again = load_image_folder(tree, 4)
    assert len(calls) == 2 and torch.equal(again.labels, torch.tensor([0, 1]))


LIST_FAULTS = [
    Row(
        "bad input",
        "a list file line naming a folder",
        "list.txt:1: image file .../cat is a folder, not an image file",
        (lambda root, lst: lst.write_text("cat 0\n"), r"list\.txt:1: image file .*cat is a folder"),
    ),
    Row(
        "bad input",
        "a binary (not UTF-8) file given as the list file",
        "list.txt: not a UTF-8 text list of 'relative/path label' lines",
        (
            lambda root, lst: lst.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"),
            r"list\.txt: not a UTF-8 text list",
        ),
    ),
]


@covers_each(LIST_FAULTS)
def test_list_file_faults_name_the_file(tmp_path, tree, row) -> None:
    from mwnet.data import load_image_list

    write, message = row.args
    lst = tmp_path / "list.txt"
    write(tree, lst)
    with pytest.raises(DatasetError, match=message):
        load_image_list(lst, tree, 4, cache=False)
