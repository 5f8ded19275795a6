"""CIFAR-10/100: extracted directories, archives, mocked downloads, hostile input."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

import mwnet.data.cifar as cifar_mod
from mwnet.data import CIFAR10, CIFAR100, DatasetError, load_dataset, safe_extract


def _write_dir(directory, files):
    directory.mkdir(parents=True)
    for name, blob in files.items():
        (directory / name).write_bytes(blob)


def _expected(files, names):
    data = [pickle.loads(files[n], encoding="bytes") for n in names]
    images = np.concatenate([d[b"data"] for d in data]).reshape(-1, 3, 32, 32)
    key = b"labels" if b"labels" in data[0] else b"fine_labels"
    labels = np.concatenate([d[key] for d in data])
    return images, labels


def test_cifar10_from_extracted_dir(tmp_path, cifar_helpers):
    cifar_files, _ = cifar_helpers
    files = cifar_files("cifar10", n_per_batch=3)
    _write_dir(tmp_path / "cifar-10-batches-py", files)
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    images, labels = _expected(files, [f"data_batch_{i}" for i in range(1, 6)])
    assert train.images.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(train.images.numpy(), images)
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    assert train.classes == [f"class{i}" for i in range(10)]
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert len(test) == 3


def test_cifar100_from_mwnet_data(tmp_path, monkeypatch, cifar_helpers):
    cifar_files, _ = cifar_helpers
    files = cifar_files("cifar100", n_per_batch=5)
    _write_dir(tmp_path / "shared" / "cifar100" / "cifar-100-python", files)
    monkeypatch.setenv("MWNET_DATA", str(tmp_path / "shared"))
    ds = load_dataset("cifar100", "test", download=False)
    images, labels = _expected(files, ["test"])
    np.testing.assert_array_equal(ds.images.numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert ds.num_classes == 100 and ds.classes[3] == "fine3"


def _archive(cifar_helpers, source, **kw):
    cifar_files, make_tar_gz = cifar_helpers
    files = cifar_files(source.name, **kw)
    blob = make_tar_gz({f"{source.dirname}/{k}": v for k, v in files.items()})
    return files, blob, dataclasses.replace(source, md5=hashlib.md5(blob).hexdigest())


def test_download_extract_and_cache(monkeypatch, cifar_helpers, fake_server, isolated_env):
    files, blob, src = _archive(cifar_helpers, CIFAR10)
    monkeypatch.setitem(cifar_mod.CIFAR_SOURCES, "cifar10", src)
    requested = fake_server({CIFAR10.url: blob})
    ds = load_dataset("cifar10")
    assert len(ds) == 20 and requested == [CIFAR10.url]
    extracted = isolated_env / "cifar10" / "cifar-10-batches-py"
    assert sorted(os.listdir(extracted)) == sorted(files)
    assert not (isolated_env / "cifar10" / CIFAR10.archive).exists()
    assert [p for p in (isolated_env / "cifar10").iterdir() if p.name.startswith(".")] == []
    assert len(load_dataset("cifar10", "test")) == 4 and len(requested) == 1


def test_archive_in_root_is_used(tmp_path, monkeypatch, cifar_helpers, isolated_env):
    _, blob, src = _archive(cifar_helpers, CIFAR100)
    monkeypatch.setitem(cifar_mod.CIFAR_SOURCES, "cifar100", src)
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / CIFAR100.archive).write_bytes(blob)
    ds = load_dataset("cifar100", root=tmp_path / "dl", download=False)
    assert len(ds) == 4
    assert (tmp_path / "dl" / CIFAR100.archive).exists()  # the user's file is kept


def test_archive_with_wrong_checksum(tmp_path, cifar_helpers):
    _, blob, _ = _archive(cifar_helpers, CIFAR10)
    (tmp_path / CIFAR10.archive).write_bytes(blob)
    with pytest.raises(DatasetError, match=f"checksum mismatch, expected MD5 {CIFAR10.md5}"):
        load_dataset("cifar10", root=tmp_path)


def test_download_bad_checksum(fake_server, isolated_env):
    fake_server({CIFAR10.url: b"garbage"})
    with pytest.raises(DatasetError, match=f"checksum mismatch for {CIFAR10.url}"):
        load_dataset("cifar10")
    assert not any((isolated_env / "cifar10").iterdir())


def test_not_found(tmp_path, fake_server):
    fake_server({})
    pattern = r"(?s)CIFAR-100 not found and the download failed.*cifar-100-python.*toronto"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("cifar100", root=tmp_path)
    with pytest.raises(DatasetError, match=r"CIFAR-10 not found \(download=False\)"):
        load_dataset("cifar10", root=tmp_path, download=False)


def _evil_archive(tmp_path, cifar_helpers, name, extra=None):
    _, make_tar_gz = cifar_helpers
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(make_tar_gz({"cifar-10-batches-py/ok": b"1", name: b"pwned"}, extra))
    return path


@pytest.mark.parametrize(
    "name", ["../escape.txt", "cifar-10-batches-py/../../escape.txt", "/tmp/escape-abs.txt"]
)
def test_safe_extract_rejects_escaping_members(tmp_path, cifar_helpers, name):
    archive = _evil_archive(tmp_path, cifar_helpers, name)
    target = tmp_path / "out" / "inner"
    with pytest.raises(DatasetError, match="would escape"):
        safe_extract(archive, target)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not (target / "cifar-10-batches-py").exists()  # nothing written at all


def test_safe_extract_rejects_links(tmp_path, cifar_helpers):
    def add_link(tar):
        info = tarfile.TarInfo("cifar-10-batches-py/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    archive = _evil_archive(tmp_path, cifar_helpers, "cifar-10-batches-py/x", add_link)
    with pytest.raises(DatasetError, match="link or special file"):
        safe_extract(archive, tmp_path / "out")


def test_truncated_archive(tmp_path, cifar_helpers):
    _, blob, _ = _archive(cifar_helpers, CIFAR10, n_per_batch=50)
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"cut\.tar\.gz: corrupt or truncated archive"):
        safe_extract(path, tmp_path / "out")


def test_truncated_batch_names_file(tmp_path, cifar_helpers):
    cifar_files, _ = cifar_helpers
    files = cifar_files("cifar10")
    files["data_batch_3"] = files["data_batch_3"][:100]
    _write_dir(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(DatasetError, match=r"data_batch_3: corrupt or truncated CIFAR batch"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_bad_shape_and_labels(tmp_path, cifar_helpers):
    cifar_files, _ = cifar_helpers
    files = cifar_files("cifar10")
    files["test_batch"] = pickle.dumps(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2
    )
    _write_dir(tmp_path / "a" / "cifar-10-batches-py", files)
    with pytest.raises(DatasetError, match=r"test_batch: data must be uint8 of shape \(n, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path / "a", download=False)
    files["test_batch"] = pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, 2
    )
    _write_dir(tmp_path / "b" / "cifar-10-batches-py", files)
    with pytest.raises(DatasetError, match=r"test_batch: labels must lie in \[0, 10\)"):
        load_dataset("cifar10", "test", root=tmp_path / "b", download=False)


def test_pickle_with_foreign_globals_is_refused(tmp_path, cifar_helpers):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    cifar_files, _ = cifar_helpers
    files = cifar_files("cifar10")
    files["batches.meta"] = pickle.dumps(Evil(), 2)
    _write_dir(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(DatasetError, match=r"batches\.meta: .*disallowed global"):
        load_dataset("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize("protocol", [4, 5])
def test_python3_protocol_batches_load(tmp_path, protocol):
    buf = io.BytesIO()
    pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [4]}, buf, protocol=protocol)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in (*CIFAR10.splits["test"], CIFAR10.meta_file):
        (d / name).write_bytes(buf.getvalue())
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    ds = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert ds.labels.tolist() == [4] and ds.classes[4] == "e"
