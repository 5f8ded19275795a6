"""MNIST and Fashion-MNIST from the four original IDX files.

Files are looked for (raw or ``.gz``) in the standard search order (see
:mod:`mwnet.data.paths`), which for Fashion-MNIST includes the Debian package location,
and downloaded with MD5 checks into the cache only when found nowhere.

Checksums apply to downloads only. Files found on disk are validated structurally
(magic numbers, sizes, label range) instead, because redistributors may recompress
them: the Debian ``.gz`` files differ byte-wise from the upstream ones although the
decompressed content is identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.download import download_file
from mwnet.data.errors import DatasetError
from mwnet.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from mwnet.data.paths import MWNET_DATA_ENV, download_dir, search_dirs

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSource:
    """Where an IDX dataset lives and how to check a download of it."""

    name: str
    title: str
    base_url: str
    md5: dict[str, str]  # keyed by file stem, checksum of the .gz file
    classes: list[str]
    system_dirs: tuple[str, ...] = ()
    package_hint: str = ""


FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    title="Fashion-MNIST",
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    md5={
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    classes=FASHION_MNIST_CLASSES,
    system_dirs=(DEBIAN_FASHION_MNIST_DIR,),
    package_hint=(
        f"sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu; installs the files "
        f"in {DEBIAN_FASHION_MNIST_DIR})"
    ),
)

MNIST = IdxSource(
    name="mnist",
    title="MNIST",
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    md5={
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    classes=MNIST_CLASSES,
)

IDX_SOURCES = {s.name: s for s in (FASHION_MNIST, MNIST)}


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _describe(directory: Path, stems: tuple[str, ...]) -> str:
    if not directory.is_dir():
        return f"  {directory} (no such directory)"
    missing = [f"{s}[.gz]" for s in stems if _find_file(directory, s) is None]
    return f"  {directory} (missing {', '.join(missing)})"


def find_idx_files(
    source: IdxSource, split: str, root: str | os.PathLike[str] | None
) -> tuple[tuple[Path, Path] | None, list[Path]]:
    """Return the (images, labels) files of ``split`` and the directories searched."""
    stems = _STEMS[split]
    dirs = search_dirs(source.name, root, source.system_dirs)
    for directory in dirs:
        images, labels = (_find_file(directory, s) for s in stems)
        if images is not None and labels is not None:
            return (images, labels), dirs
    return None, dirs


def _not_found(source: IdxSource, split: str, dirs: list[Path], reason: str) -> DatasetError:
    stems = _STEMS[split]
    looked = "\n".join(_describe(d, stems) for d in dirs)
    urls = "\n".join(f"    {source.base_url}{s}.gz" for s in stems)
    ways = []
    if source.package_hint:
        ways.append(source.package_hint)
    ways.append(
        f"put {stems[0]}[.gz] and {stems[1]}[.gz] in a directory DIR and pass root=DIR, "
        f"or put them in $MWNET_DATA/{source.name}/ and set {MWNET_DATA_ENV}"
    )
    ways.append(f"download them from:\n{urls}")
    ways.append("call with download=True on a machine with network access")
    how = "\n".join(f"  - {w}" for w in ways)
    return DatasetError(
        f"{source.title} ({split} split) not found{reason}. Looked in:\n{looked}\n"
        f"To get the files, do one of:\n{how}"
    )


def _refuse_partial(source: IdxSource, split: str, dirs: list[Path]) -> None:
    """An explicit root with some of the dataset's files but not this split's pair is a
    damaged or incomplete copy: say what is missing, never complete it from elsewhere."""
    every = [stem for pair in _STEMS.values() for stem in pair]
    for directory in dirs:
        present = [s for s in every if _find_file(directory, s) is not None]
        if present:
            missing = [f"{s}[.gz]" for s in _STEMS[split] if _find_file(directory, s) is None]
            raise DatasetError(
                f"{directory} holds part of {source.title} but not its {split} split: missing "
                f"{', '.join(missing)}. Add the missing files there, or drop data.root (root=) "
                "to use the standard locations"
            )


def load_idx_dataset(
    source: IdxSource,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load one split of an IDX dataset as ``uint8`` images of shape ``(N, 1, 28, 28)``.

    Looks in the standard search order and downloads into the cache only when the files
    are found nowhere and ``download`` is true.

    Raises:
        DatasetError: files not found (listing where it looked and how to get them),
            download or checksum failure, or invalid file content.
    """
    if split not in _STEMS:
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    files, dirs = find_idx_files(source, split, root)
    if files is None and root is not None:
        _refuse_partial(source, split, dirs)
    if files is None:
        if not download:
            raise _not_found(source, split, dirs, " (download=False)")
        target = download_dir(source.name, root)
        try:
            for stem in _STEMS[split]:
                dest = target / f"{stem}.gz"
                if not dest.is_file():
                    download_file(f"{source.base_url}{stem}.gz", dest, source.md5[stem])
        except DatasetError as exc:
            raise _not_found(source, split, dirs, f" and the download failed: {exc}") from exc
        files = (target / f"{_STEMS[split][0]}.gz", target / f"{_STEMS[split][1]}.gz")
    return parse_idx_pair(files[0], files[1], source.classes, source.name)


def parse_idx_pair(
    images_path: Path, labels_path: Path, classes: list[str], name: str
) -> ImageDataset:
    """Read and cross-check an images file and its labels file."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(classes):
        raise DatasetError(
            f"{labels_path}: label {int(labels.max())} out of range for {len(classes)} classes"
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(labels.astype("int64")),
        classes=list(classes),
        name=name,
    )
