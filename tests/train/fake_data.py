"""Tiny datasets written in the exact on-disk formats the presets read."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _balanced(per_class: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(classes), per_class)).astype(np.uint8)


def _learnable(labels: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Noise plus a class-dependent bright patch, so a few steps can learn something."""
    images = rng.integers(0, 100, size=(len(labels), *shape), dtype=np.int64)
    flat = images.reshape(len(labels), -1)
    for c in np.unique(labels):
        flat[labels == c, (int(c) * 7) % flat.shape[1]] = 255
    return images.astype(np.uint8)


def write_idx(root: Path, per_class: int = 30, test_per_class: int = 5, seed: int = 0) -> Path:
    """Fashion-MNIST/MNIST layout: the four gzipped IDX files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = _balanced(n, 10, rng)
        images = _learnable(labels, (28, 28), rng)
        for stem, arr, magic in (
            (f"{prefix}-images-idx3-ubyte", images, 0x803),
            (f"{prefix}-labels-idx1-ubyte", labels, 0x801),
        ):
            header = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (root / f"{stem}.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    return root


def write_cifar(root: Path, classes: int, per_class: int, test_per_class: int = 2) -> Path:
    """The extracted "python version" directory, pickled batches with bytes keys."""
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"
    directory = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    directory.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray) -> bytes:
        data = _learnable(labels, (3072,), rng)
        return pickle.dumps({b"data": data, key: [int(v) for v in labels]}, protocol=2)

    train = _balanced(per_class, classes, rng)
    test = _balanced(test_per_class, classes, rng)
    if classes == 10:
        for i, part in enumerate(np.array_split(train, 5), start=1):
            (directory / f"data_batch_{i}").write_bytes(batch(part))
        (directory / "test_batch").write_bytes(batch(test))
        names = [f"class{i}".encode() for i in range(10)]
        (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, 2))
    else:
        (directory / "train").write_bytes(batch(train))
        (directory / "test").write_bytes(batch(test))
        names = [f"fine{i}".encode() for i in range(100)]
        (directory / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}, 2))
    return root


def write_image_list(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    """Clothing1M layout: JPEGs under root and "relative/path label" list files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for list_name, n in (
        ("noisy_label_kv.txt", per_class),
        ("clean_test_kv.txt", 2),
        ("clean_val_kv.txt", 2),
    ):
        lines = []
        for i, label in enumerate(_balanced(n, classes, rng)):
            rel = f"images/{list_name[:5]}/{i}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / rel)
            lines.append(f"{rel} {int(label)}")
        (root / list_name).write_text("\n".join(lines) + "\n")
    return root


def write_image_folder(
    root: Path, classes: int = 3, per_class: int = 8, meta_classes: int | None = None
) -> Path:
    """A user's own images: ``train/<class>/``, ``test/<class>/`` and, if ``meta_classes``
    is given, a trusted ``meta/<class>/`` holding the first ``meta_classes`` classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    parts = [("train", per_class), ("test", 2)]
    if meta_classes is not None:
        parts.append(("meta", 2))
    for part, n in parts:
        count = meta_classes if part == "meta" else classes
        for c in range(count):
            folder = root / part / f"class-{'abcdefgh'[c]}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 100, size=(12, 12, 3), dtype=np.uint8)
                pixels[:, : 4 * (c + 1)] = 255  # learnable: the class sets a bright band
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def tiny_folder_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """Config overrides for the cheapest run on an image folder written by
    :func:`write_image_folder`: cross-entropy, a one-layer MLP on 12-pixel images, one epoch,
    one CPU thread; ``extra`` last, so it can override any of them."""
    return [
        "data.dataset=folder",
        f"data.root={root}",
        "data.image_size=12",
        "data.batch_size=8",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=1",
        "method.name=ce",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        *extra,
    ]


def tiny_idx_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """Config overrides for a cheap run that learns the IDX data of :func:`write_idx`
    (written with ``per_class=20``): cross-entropy, a 16-unit MLP, two epochs, one CPU
    thread; ``extra`` last, so it can override any of them."""
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=2",
        "data.batch_size=20",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.epochs=2",
        "optim.lr=0.1",
        "method.name=ce",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        *extra,
    ]
