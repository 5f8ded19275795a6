"""The user's own images: a class-per-subfolder tree or a "path label" list file.

Images are decoded once with Pillow (imported lazily: it is an optional dependency),
resized so the shorter side fits, centre-cropped to a fixed size, and stored as one
``uint8`` tensor like the built-in datasets. Decoding thousands of JPEGs is the slow
part, so the result is cached in the cache directory under a hash of the file list
(paths, sizes, modification times), the labels and the target size: changing any of
them rebuilds the cache instead of serving stale data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.errors import DatasetError
from mwnet.data.paths import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

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


def decode_image(path: Path, size: Size, where: str = "") -> torch.Tensor:
    """Decode ``path`` to a ``uint8`` RGB tensor ``(3, h, w)``.

    The shorter side is scaled to cover the target, then the centre is cropped: the
    usual evaluation transform, and deterministic, which a cached tensor must be.
    """
    image_mod = _pil()
    h, w = _size_hw(size)
    try:
        with image_mod.open(path) as img:
            img = img.convert("RGB")
            scale = max(h / img.height, w / img.width)
            new_w = max(w, round(img.width * scale))
            new_h = max(h, round(img.height * scale))
            img = img.resize((new_w, new_h), image_mod.Resampling.BILINEAR)
            left, top = (new_w - w) // 2, (new_h - h) // 2
            img = img.crop((left, top, left + w, top + h))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decode errors
        raise DatasetError(f"{path}{where}: cannot read image: {exc}") from exc
    return data.view(h, w, 3).permute(2, 0, 1).contiguous()


def _cache_key(
    files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], size: tuple[int, int]
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"size": size, "classes": list(classes)}).encode())
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
        _save_atomic(
            {"images": images, "labels": dataset.labels, "classes": classes, "name": name},
            cache_file,
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


def load_image_folder(
    root: str | os.PathLike[str],
    size: Size,
    cache: bool = True,
    classes: Sequence[str] | None = None,
) -> ImageDataset:
    """Load ``root/<class>/**/<image>`` with one class per subfolder, classes sorted.

    Sorted class names give the same label numbering on every machine, whatever order
    the file system lists directories in.

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
        found = sorted(
            p
            for p in (root / cls).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        files += found
        labels += [label] * len(found)
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
    try:
        lines = list_file.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"{list_file}: cannot read list file: {exc}") from exc
    files: list[Path] = []
    labels: list[int] = []
    where: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        loc = f"{list_file}:{lineno}"
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{loc}: expected 'relative/path label', got {text!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DatasetError(f"{loc}: label {parts[1]!r} is not an integer") from None
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = f"[0, {len(classes)})" if classes is not None else ">= 0"
            raise DatasetError(f"{loc}: label {label} out of range (expected {limit})")
        path = image_root / parts[0]
        if not path.is_file():
            raise DatasetError(f"{loc}: image file {path} does not exist")
        files.append(path)
        labels.append(label)
        where.append(f" (listed at {loc})")
    if not files:
        raise DatasetError(f"{list_file}: no entries")
    names = list(classes) if classes is not None else [str(i) for i in range(max(labels) + 1)]
    return _build(files, labels, names, size, list_file.stem, where, cache)
