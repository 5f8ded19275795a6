"""One entry point for the named datasets."""

from __future__ import annotations

import os

from mwnet.data.cifar import CIFAR_SOURCES, load_cifar
from mwnet.data.dataset import ImageDataset
from mwnet.data.errors import DatasetError
from mwnet.data.mnist import IDX_SOURCES, load_idx_dataset

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100")

_BY_SQUASHED = {n.replace("-", ""): n for n in DATASET_NAMES}


def canonical_name(name: str) -> str:
    """Map spellings like ``"CIFAR-10"`` or ``"fashion_mnist"`` to the canonical name."""
    key = _BY_SQUASHED.get(name.strip().lower().replace("_", "").replace("-", ""))
    if key is None:
        raise DatasetError(
            f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)} "
            f"(for your own images use load_image_folder or load_image_list)"
        )
    return key


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load a split of a named dataset into memory as ``uint8`` images.

    Files are searched in order: ``root`` (and ``root/<name>``), ``$MWNET_DATA/<name>``,
    the Debian location for Fashion-MNIST, then the cache ``~/.cache/mwnet/<name>``
    (``$XDG_CACHE_HOME`` honoured); they are downloaded into the cache with checksum
    verification only if found nowhere and ``download`` is true.

    Args:
        name: ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        root: an extra directory to look in first.
        download: allow downloading when the files are not found.

    Raises:
        DatasetError: unknown name or split, files not found, bad checksum, corrupt file.
    """
    key = canonical_name(name)
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    if key in IDX_SOURCES:
        return load_idx_dataset(IDX_SOURCES[key], split, root, download)
    return load_cifar(CIFAR_SOURCES[key], split, root, download)
