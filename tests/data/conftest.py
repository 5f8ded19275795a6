"""Shared fixtures for the data-layer tests: an isolated cache and no network."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import mwnet.data.download as download_mod


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache into tmp_path, unset MWNET_DATA, and forbid real downloads."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("MWNET_DATA", raising=False)

    def no_network(url: str, timeout: float = 60.0):
        raise AssertionError(f"test tried to reach the network: {url}")

    monkeypatch.setattr(download_mod, "open_url", no_network)
    return cache / "mwnet"


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, bytes]], list[str]]:
    """Serve the given {url: bytes}; unknown URLs fail like an offline machine."""

    def install(files: dict[str, bytes]) -> list[str]:
        requested: list[str] = []

        def open_url(url: str, timeout: float = 60.0):
            requested.append(url)
            if url not in files:
                raise OSError(f"<urlopen error [Errno -3] offline: {url}>")
            return io.BytesIO(files[url])

        monkeypatch.setattr(download_mod, "open_url", open_url)
        return requested

    return install


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


@pytest.fixture
def write_idx_split() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Write a tiny IDX split (images + labels) into a directory, gzipped or raw."""

    def write(
        directory: Path, split: str = "train", n: int = 12, gz: bool = True, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        prefix = "train" if split == "train" else "t10k"
        directory.mkdir(parents=True, exist_ok=True)
        for stem, arr in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(arr)
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)
        return images, labels

    return write


def cifar_files(kind: str, n_per_batch: int = 4, seed: int = 0) -> dict[str, bytes]:
    """Pickled CIFAR batch files (Python 2 style: protocol 2, bytes keys)."""
    rng = np.random.default_rng(seed)

    def batch(label_key: bytes, k: int) -> bytes:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, k, size=n_per_batch)]
        return pickle.dumps({b"data": data, label_key: labels, b"batch_label": b"x"}, 2)

    if kind == "cifar10":
        files = {f"data_batch_{i}": batch(b"labels", 10) for i in range(1, 6)}
        files["test_batch"] = batch(b"labels", 10)
        names = [f"class{i}".encode() for i in range(10)]
        files["batches.meta"] = pickle.dumps({b"label_names": names, b"num_vis": 3072}, 2)
        return files
    files = {"train": batch(b"fine_labels", 100), "test": batch(b"fine_labels", 100)}
    names = [f"fine{i}".encode() for i in range(100)]
    files["meta"] = pickle.dumps({b"fine_label_names": names, b"coarse_label_names": []}, 2)
    return files


def make_tar_gz(
    members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return buf.getvalue()


@pytest.fixture
def cifar_helpers():
    return cifar_files, make_tar_gz


@pytest.fixture
def make_idx() -> Callable[..., bytes]:
    return idx_bytes
