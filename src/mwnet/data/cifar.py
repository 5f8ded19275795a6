"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

An existing extracted directory (``cifar-10-batches-py`` / ``cifar-100-python``, the
layout torchvision also uses) is looked for in the standard search order; otherwise the
archive is taken from those places or downloaded, checked against its MD5, and
extracted into the cache with every member's path validated first.

The batches are pickles. Unpickling can run arbitrary code, so they are read with an
unpickler that only allows the few numpy constructors the real files need.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.download import download_file, md5_of
from mwnet.data.errors import DatasetError
from mwnet.data.paths import MWNET_DATA_ENV, download_dir, search_dirs


@dataclass(frozen=True)
class CifarSource:
    """File names, URL and checksum of one CIFAR archive."""

    name: str
    title: str
    url: str
    archive: str
    md5: str
    dirname: str
    splits: dict[str, tuple[str, ...]]
    meta_file: str
    label_key: str
    names_key: str

    def needed(self, split: str) -> tuple[str, ...]:
        return (*self.splits[split], self.meta_file)


CIFAR10 = CifarSource(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    dirname="cifar-10-batches-py",
    splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)

CIFAR100 = CifarSource(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    dirname="cifar-100-python",
    splits={"train": ("train",), "test": ("test",)},
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)

CIFAR_SOURCES = {s.name: s for s in (CIFAR10, CIFAR100)}

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # protocols 2-4
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


_UNPICKLE_ERRORS = (
    OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
    AttributeError, IndexError, KeyError, zlib.error,
)  # fmt: skip


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3, protocol 2
            import codecs

            return codecs.encode
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}") from None


def _get(d: dict, key: str) -> Any:
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


def load_batch_file(path: Path) -> dict:
    """Unpickle one CIFAR batch file safely; any failure names the file."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except _UNPICKLE_ERRORS as exc:
        raise DatasetError(f"{path}: corrupt or truncated CIFAR batch: {exc!r}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_batch_file(path)
    try:
        data = np.asarray(_get(batch, "data"))
        labels = np.asarray(_get(batch, label_key), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: missing or malformed key {exc}") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: data must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _parse_meta(path: Path, names_key: str) -> list[str]:
    meta = load_batch_file(path)
    try:
        names = _get(meta, names_key)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: missing or malformed class names {exc}") from exc


def parse_cifar_dir(source: CifarSource, directory: Path, split: str) -> ImageDataset:
    """Parse the extracted batch files of ``split`` in ``directory``."""
    classes = _parse_meta(directory / source.meta_file, source.names_key)
    parts = [
        _parse_batch(directory / f, source.label_key, len(classes)) for f in source.splits[split]
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=classes,
        name=source.name,
    )


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a ``.tar.gz`` into ``target``, refusing anything that could escape it.

    Every member is checked before anything is written: absolute paths, ``..``
    components, and links or device files are rejected. Extraction goes to a temporary
    directory inside ``target`` and top-level entries are then renamed into place, so a
    failure leaves no half-extracted tree behind.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                pure = PurePosixPath(m.name)
                escapes = (
                    pure.is_absolute()
                    or ".." in pure.parts
                    or not (root / m.name).resolve().is_relative_to(root)
                )
                if escapes:
                    raise DatasetError(f"{archive}: member {m.name!r} would escape {target}")
                if not (m.isfile() or m.isdir()):
                    raise DatasetError(
                        f"{archive}: member {m.name!r} is a link or special file; refusing"
                    )
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=target) as tmp:
                tmp_root = Path(tmp)
                for m in members:
                    out = tmp_root / m.name
                    if m.isdir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                for entry in tmp_root.iterdir():
                    dest = target / entry.name
                    if dest.is_dir():
                        shutil.rmtree(dest)
                    elif dest.exists():
                        dest.unlink()
                    os.replace(entry, dest)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"{archive}: cannot extract into {target}: {exc}") from exc


def _has_split(directory: Path, source: CifarSource, split: str) -> bool:
    return all((directory / f).is_file() for f in source.needed(split))


def _not_found(source: CifarSource, dirs: list[Path], reason: str) -> DatasetError:
    looked = "\n".join(f"  {d}/{source.dirname}/, {d}/, {d}/{source.archive}" for d in dirs)
    return DatasetError(
        f"{source.title} not found{reason}. Looked for an extracted {source.dirname}/ "
        f"directory or the {source.archive} archive in:\n{looked}\n"
        f"To get it, do one of:\n"
        f"  - download {source.url} (MD5 {source.md5}) into a directory DIR and pass "
        f"root=DIR, or into $MWNET_DATA/{source.name}/ and set {MWNET_DATA_ENV}\n"
        f"  - call with download=True on a machine with network access"
    )


def _refuse_partial(source: CifarSource, split: str, dirs: list[Path]) -> None:
    """An explicit root holding some batch files but not this split's is an incomplete
    copy: say what is missing, never complete it from another copy."""
    every = {f for files in source.splits.values() for f in files} | {source.meta_file}
    for d in dirs:
        for candidate in (d / source.dirname, d):
            if any((candidate / f).is_file() for f in every):
                missing = [f for f in source.needed(split) if not (candidate / f).is_file()]
                raise DatasetError(
                    f"{candidate} holds part of {source.title} but not its {split} split: "
                    f"missing {', '.join(missing)}. Add them there, or drop data.root (root=) "
                    "to use the standard locations"
                )


def load_cifar(
    source: CifarSource,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load one split of CIFAR-10 or CIFAR-100 as ``uint8`` images ``(N, 3, 32, 32)``.

    Raises:
        DatasetError: not found (listing where it looked), bad checksum, unsafe or
            corrupt archive, or a corrupt batch file (named).
    """
    if split not in source.splits:
        raise DatasetError(f"unknown split {split!r}; expected 'train' or 'test'")
    dirs = search_dirs(source.name, root)
    for d in dirs:
        for candidate in (d / source.dirname, d):
            if _has_split(candidate, source, split):
                return parse_cifar_dir(source, candidate, split)

    target = download_dir(source.name, root)
    archive = next((d / source.archive for d in dirs if (d / source.archive).is_file()), None)
    if archive is None and root is not None:
        _refuse_partial(source, split, dirs)
    if archive is not None:
        got = md5_of(archive)
        if got != source.md5:
            raise DatasetError(
                f"{archive}: checksum mismatch, expected MD5 {source.md5}, got {got}"
            )
        downloaded = False
    elif download:
        archive = target / source.archive
        try:
            download_file(source.url, archive, source.md5)
        except DatasetError as exc:
            raise _not_found(source, dirs, f" and the download failed: {exc}") from exc
        downloaded = True
    else:
        raise _not_found(source, dirs, " (download=False)")
    safe_extract(archive, target)
    if downloaded:
        archive.unlink()
    extracted = target / source.dirname
    if not _has_split(extracted, source, split):
        missing = [f for f in source.needed(split) if not (extracted / f).is_file()]
        raise DatasetError(f"{archive}: archive lacks {', '.join(missing)} under {source.dirname}/")
    return parse_cifar_dir(source, extracted, split)
