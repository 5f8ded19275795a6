"""The user's own images: a class-per-subfolder tree or a "path label" list file.

Images are decoded once with Pillow (imported lazily: it is an optional dependency),
resized so the shorter side fits, centre-cropped to a fixed size, and stored as one
``uint8`` tensor like the built-in datasets. Decoding thousands of JPEGs is the slow
part, so the result is cached in the cache directory under a hash of the file list
(paths, sizes, modification times), the labels and the target size: changing any of
them rebuilds the cache instead of serving stale data.

Every image becomes 8-bit RGB by one documented rule per kind of pixel (see
:func:`to_rgb8`), and a pixel that has no meaning as an intensity is an error naming the
file: training on images that silently came out white, black or scrambled is worse than
not training.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.errors import DatasetError
from mwnet.data.paths import cache_dir

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

BACKGROUND = (255, 255, 255)
"""What transparent pixels are composited on: white, the page a transparent image (a
product photo, an icon) is usually drawn on. Without it, the colour hidden under a
transparent pixel (often black, often left-over garbage) would be trained on."""

DECODER_VERSION = 2
"""Part of the cache key: a decoded tensor cached by an older rule is rebuilt."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;16LS", "I")

Size = int | tuple[int, int]


def _size_hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise DatasetError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetError("loading image files needs Pillow: pip install 'mwnet[images]'") from exc
    return Image


def to_rgb8(img: Any, path: Path | str = "") -> Any:
    """An 8-bit RGB copy of the Pillow image ``img``, by one rule per kind of pixel.

    - 16-bit and 32-bit integer greyscale (modes ``I;16*``, ``I``): read as 16-bit,
      ``0 .. 65535`` scaled to ``0 .. 255`` (rounded). Values outside that range have no
      agreed meaning and are an error.
    - Floating point greyscale (mode ``F``): read as intensities in ``[0, 1]``, scaled
      by 255 (rounded). Values outside ``[0, 1]`` (raw sensor units, HDR) or NaN and
      infinities have no agreed mapping and are an error: stretching each image by its own
      minimum and maximum would make the same value mean different things in different
      images.
    - Transparency (``RGBA``, ``LA``, ``PA``, palette or greyscale images with a
      transparent colour): composited on :data:`BACKGROUND` (white).
    - Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...): Pillow's conversion;
      bilevel images become 0 and 255, CMYK is converted without a colour profile.

    Raises:
        DatasetError: naming ``path``, for pixel values that cannot be read as intensities.
    """
    image_mod = _pil()
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        grey = np.asarray(img)
        if mode == "F":
            if not np.isfinite(grey).all():
                raise DatasetError(
                    f"{path}: floating-point image with NaN or infinite pixel values; "
                    "replace them, or save the image as 8- or 16-bit"
                )
            low, high = float(grey.min()), float(grey.max())
            if low < 0.0 or high > 1.0:
                raise DatasetError(
                    f"{path}: floating-point pixel values in [{low:g}, {high:g}], but mwnet "
                    "reads floating-point images as intensities in [0, 1]; rescale it to "
                    "[0, 1], or save it as 8- or 16-bit"
                )
            eight = np.rint(grey.astype(np.float64) * 255.0)
        else:
            low, high = int(grey.min()), int(grey.max())
            if low < 0 or high > 65535:
                raise DatasetError(
                    f"{path}: integer pixel values in [{low}, {high}], outside the 16-bit "
                    "range 0..65535 mwnet reads them in; save the image as 8- or 16-bit"
                )
            eight = np.rint(grey.astype(np.float64) * (255.0 / 65535.0))
        return image_mod.fromarray(eight.astype(np.uint8)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = image_mod.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return image_mod.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _too_large(path: Path, where: str, exc: Exception) -> DatasetError:
    limit = _pil().MAX_IMAGE_PIXELS
    detail = str(exc).split(",")[0].rstrip(".")
    return DatasetError(
        f"{path}{where}: image too large to decode safely ({detail}); mwnet reads images of "
        f"at most {limit} pixels (Pillow's guard against decompression bombs): if the image "
        "is genuine, shrink it below that (it is scaled down for training anyway)"
    )


def decode_image(path: Path, size: Size, where: str = "") -> torch.Tensor:
    """Decode ``path`` to a ``uint8`` RGB tensor ``(3, h, w)``.

    The image is turned upright by its EXIF orientation (as every viewer shows it) and
    made 8-bit RGB by :func:`to_rgb8`. The shorter side is scaled to cover the target,
    then the centre is cropped: the usual evaluation transform, and deterministic, which a
    cached tensor must be.

    Raises:
        DatasetError: naming the file, for a file Pillow cannot decode, an image over
            Pillow's decompression-bomb limit, or pixels :func:`to_rgb8` refuses.
    """
    h, w = _size_hw(size)
    return cover_crop(_open_rgb8(path, where), h, w, path, where)


def read_image(
    path: Path, size: Size, channels: int = 3, resize: bool = True, where: str = ""
) -> torch.Tensor:
    """One image file as a model trained on ``size`` images of ``channels`` channels
    takes it: ``uint8`` ``(channels, h, w)``.

    With ``resize`` it is read exactly as ``data.dataset=folder`` and ``list`` read their
    images (:func:`decode_image`: upright, 8-bit RGB, scaled to cover, centre-cropped).
    Without it the image must already be ``size`` (the named datasets are trained at their
    own size, never resized): any other size is refused rather than silently distorted.
    One channel is the greyscale of the RGB image (:func:`grey8`).

    Raises:
        DatasetError: naming the file, for everything :func:`decode_image` refuses, and
            (``resize=False``) an image of another size.
    """
    if channels not in (1, 3):
        raise DatasetError(f"images have 1 (greyscale) or 3 (RGB) channels, not {channels}")
    h, w = _size_hw(size)
    img = _open_rgb8(path, where)
    if not resize and (img.height, img.width) != (h, w):
        raise DatasetError(
            f"{path}{where}: the image is {img.width}x{img.height} pixels, but the model takes "
            f"{w}x{h} images as they are (it was trained on a dataset of that size, never "
            f"resized); resize the image to {w}x{h} first"
        )
    rgb = cover_crop(img, h, w, path, where)  # the image itself when it has the size
    return rgb if channels == 3 else grey8(rgb[None])[0]


def grey8(rgb: torch.Tensor) -> torch.Tensor:
    """The greyscale of ``uint8`` RGB images ``(N, 3, H, W)``, as ``(N, 1, H, W)``.

    Pillow's ``convert("L")``, ITU-R 601-2 luma ``L = (19595 R + 38470 G + 7471 B +
    2^15) >> 16``, in integers: the weights sum to ``2^16``, so a grey pixel (R = G = B)
    keeps its exact value, and a greyscale image saved as RGB reads back unchanged.
    """
    if rgb.dtype != torch.uint8 or rgb.dim() != 4 or rgb.shape[1] != 3:
        raise DatasetError(f"expected uint8 RGB images (N, 3, H, W), got {tuple(rgb.shape)}")
    r, g, b = rgb.to(torch.int32).unbind(1)
    luma = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    return luma.to(torch.uint8).unsqueeze(1)


def _open_rgb8(path: Path, where: str) -> Any:
    """``path`` decoded, upright by its EXIF orientation, as an 8-bit RGB Pillow image."""
    image_mod = _pil()
    from PIL import ImageOps

    bombs = (image_mod.DecompressionBombError, image_mod.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; either way the file is
            # refused with one line rather than decoded behind a multi-line warning.
            warnings.simplefilter("error", image_mod.DecompressionBombWarning)
            with image_mod.open(path) as img:
                return to_rgb8(ImageOps.exif_transpose(img), f"{path}{where}")
    except bombs as exc:
        raise _too_large(path, where, exc) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's decode errors
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}{where}: cannot read image: {exc}") from exc


def cover_crop(img: Any, h: int, w: int, path: Path | str = "", where: str = "") -> torch.Tensor:
    """The RGB Pillow image ``img`` scaled so that it covers ``h x w``, centre-cropped to
    it, as a ``uint8`` ``(3, h, w)`` tensor (an image of that size is returned as it is:
    Pillow's resize to its own size is a copy). ``path`` and ``where`` name it in errors."""
    image_mod = _pil()
    try:
        scale = max(h / img.height, w / img.width)
        new_w = max(w, round(img.width * scale))
        new_h = max(h, round(img.height * scale))
        img = img.resize((new_w, new_h), image_mod.Resampling.BILINEAR)
        left, top = (new_w - w) // 2, (new_h - h) // 2
        img = img.crop((left, top, left + w, top + h))
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}{where}: cannot read image: {exc}") from exc
    return data.view(h, w, 3).permute(2, 0, 1).contiguous()


def _cache_key(
    files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], size: tuple[int, int]
) -> str:
    digest = hashlib.sha256()
    key = {"size": size, "classes": list(classes), "decoder": DECODER_VERSION}
    digest.update(json.dumps(key).encode())
    for f, y in zip(files, labels, strict=True):
        st = f.stat()
        digest.update(f"{f.resolve()}\t{y}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _build(
    files: list[Path],
    labels: list[int],
    classes: list[str],
    size: Size,
    name: str,
    where: list[str],
    cache: bool,
) -> ImageDataset:
    hw = _size_hw(size)
    paths = tuple(str(f) for f in files)
    cache_file = None
    if cache:
        cache_file = cache_dir() / "images" / f"{_cache_key(files, labels, classes, hw)}.pt"
        if cache_file.is_file():
            try:
                blob = torch.load(cache_file, weights_only=True)
                return ImageDataset(
                    blob["images"], blob["labels"], blob["classes"], blob["name"], paths
                )
            except Exception:  # a bad cache entry is rebuilt, not fatal
                pass
    images = torch.empty((len(files), 3, *hw), dtype=torch.uint8)
    for i, (f, loc) in enumerate(zip(files, where, strict=True)):
        images[i] = decode_image(f, hw, loc)
    dataset = ImageDataset(images, torch.tensor(labels, dtype=torch.int64), classes, name, paths)
    if cache_file is not None:
        try:
            _save_atomic(
                {"images": images, "labels": dataset.labels, "classes": classes, "name": name},
                cache_file,
            )
        except (OSError, RuntimeError) as err:  # a full disk: torch's writer raises RuntimeError
            warnings.warn(
                f"could not write the decoded images to the cache {cache_file} "
                f"({(str(err).strip().splitlines() or [type(err).__name__])[0]}); "
                "continuing without it (the next run decodes them again)",
                stacklevel=2,
            )
    return dataset


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _raise_listing(err: OSError) -> None:
    raise DatasetError(f"{err.filename}: cannot list folder: {err.strerror or err}") from err


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (sorted), and the other files seen there.

    Symlinked subfolders are followed, as a file browser shows them; each real folder is
    read once, so a link back to a parent cannot loop and a folder linked twice does not
    count its images twice. Hidden files and folders (``.thumbnails``, ``._x.jpg`` copies
    from macOS) are skipped, like hidden class folders.

    Raises:
        DatasetError: a folder that cannot be listed, or an image name whose symbolic link
            leads nowhere.
    """
    images: list[Path] = []
    others: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise_listing, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                others.append(path)
            elif path.is_file():
                images.append(path)
            elif path.is_symlink():
                raise DatasetError(
                    f"{path}: symbolic link to {os.readlink(path)}, which does not exist; "
                    "restore its target or remove the link"
                )
    return sorted(images), sorted(others)


def load_image_folder(
    root: str | os.PathLike[str],
    size: Size,
    cache: bool = True,
    classes: Sequence[str] | None = None,
) -> ImageDataset:
    """Load ``root/<class>/**/<image>`` with one class per subfolder, classes sorted.

    Sorted class names give the same label numbering on every machine, whatever order
    the file system lists directories in. Files are found by :func:`image_files` (by
    their extension, :data:`IMAGE_EXTENSIONS`; other files are ignored). A class folder
    holding no image file is an error, not a class with nothing in it: it usually means
    the images are elsewhere or in a format not read here.

    Args:
        root: directory whose subdirectories are the classes.
        size: output ``h == w`` or ``(h, w)``.
        cache: reuse / write the decoded tensor in the cache directory.
        classes: number the labels by these class names (e.g. the training folder's), so
            that a folder holding only some of the classes labels them alike; a subfolder
            not among them is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"{root}: no class subdirectories found")
    if classes is not None:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DatasetError(
                f"{root}: class folder(s) {', '.join(unknown)} are not classes of the training "
                f"set ({', '.join(classes)})"
            )
    classes = list(found if classes is None else classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if not (root / cls).is_dir():
            continue
        images, others = image_files(root / cls)
        if not images:
            seen = ""
            if others:
                seen = f"; it holds {len(others)} other file(s), e.g. {others[0].name}"
            raise DatasetError(
                f"{root / cls}: class folder without image files ({', '.join(IMAGE_EXTENSIONS)})"
                f"{seen}; add its images or remove the folder"
            )
        files += images
        labels += [label] * len(images)
    if not files:
        raise DatasetError(
            f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders"
        )
    return _build(files, labels, classes, size, root.name, [""] * len(files), cache)


def load_image_list(
    list_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    size: Size,
    classes: Sequence[str] | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Load images listed as ``relative/path label`` lines (Clothing1M's format).

    Blank lines and lines starting with ``#`` are skipped; the path may contain spaces
    (the label is the last field). Without ``classes`` the class names are
    ``"0" .. str(max_label)``.

    Raises:
        DatasetError: naming the list file and line number for a malformed line, an
            out-of-range label, or a missing or unreadable image.
    """
    list_file, image_root = Path(list_file), Path(image_root)
    files: list[Path] = []
    labels: list[int] = []
    where: list[str] = []
    for loc, relative, label in list_entries(list_file):  # every label given: required
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = f"[0, {len(classes)})" if classes is not None else ">= 0"
            raise DatasetError(f"{loc}: label {label} out of range (expected {limit})")
        path = image_root / relative
        if not path.is_file():
            problem = "is a folder, not an image file" if path.is_dir() else "does not exist"
            raise DatasetError(f"{loc}: image file {path} {problem}")
        files.append(path)
        labels.append(label)
        where.append(f" (listed at {loc})")
    if not files:
        raise DatasetError(f"{list_file}: no entries")
    names = list(classes) if classes is not None else [str(i) for i in range(max(labels) + 1)]
    return _build(files, labels, names, size, list_file.stem, where, cache)


def list_entries(
    list_file: str | os.PathLike[str], labels_required: bool = True
) -> list[tuple[str, str, int | None]]:
    """The entries of a ``relative/path label`` list file: ``(where, path, label)`` each,
    ``where`` being ``file:line`` for messages.

    Blank lines and lines starting with ``#`` are skipped; the path may contain spaces
    (the label is the last field). With ``labels_required=False`` a line may be a path
    alone: its last field is its label only if it is an integer and not the whole line
    (the label is then None).

    Raises:
        DatasetError: an unreadable or non-UTF-8 file, or (labels required) a line
            without an integer label, naming the file and line.
    """
    list_file = Path(list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{list_file}: cannot read list file: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{list_file}: not a UTF-8 text list of 'relative/path label' lines ({exc.reason} "
            f"at byte {exc.start}); is it the right file?"
        ) from None
    entries: list[tuple[str, str, int | None]] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        loc = f"{list_file}:{lineno}"
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            if labels_required:
                raise DatasetError(f"{loc}: expected 'relative/path label', got {text!r}")
            entries.append((loc, text, None))
            continue
        try:
            label = int(parts[1])
        except ValueError:
            if labels_required:
                raise DatasetError(f"{loc}: label {parts[1]!r} is not an integer") from None
            entries.append((loc, text, None))
            continue
        entries.append((loc, parts[0], label))
    return entries
