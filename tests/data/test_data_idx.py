"""IDX parsing and the MNIST / Fashion-MNIST sources, including mocked downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

import mwnet.data.mnist as mnist_mod
from mwnet.data import (
    FASHION_MNIST,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST,
    DatasetError,
    load_dataset,
    read_idx,
)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Hide a system-wide Debian Fashion-MNIST so search-order tests are hermetic."""
    src = dataclasses.replace(FASHION_MNIST, system_dirs=(str(tmp_path / "no-debian"),))
    monkeypatch.setitem(mnist_mod.IDX_SOURCES, "fashion-mnist", src)
    return src


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, make_idx, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = make_idx(arr)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path, IDX_IMAGES_MAGIC)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_read_idx_wrong_magic(tmp_path, make_idx):
    path = tmp_path / "labels"
    path.write_bytes(make_idx(np.zeros(5, np.uint8)))
    with pytest.raises(DatasetError, match=r"labels: wrong IDX magic number 0x00000801"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_read_idx_truncated_payload(tmp_path, make_idx):
    path = tmp_path / "imgs.gz"
    path.write_bytes(gzip.compress(make_idx(np.zeros((3, 28, 28), np.uint8))[:-10]))
    with pytest.raises(DatasetError, match=r"imgs\.gz: truncated IDX payload"):
        read_idx(path, IDX_IMAGES_MAGIC)


def test_read_idx_truncated_header_and_trailing(tmp_path, make_idx):
    path = tmp_path / "short"
    path.write_bytes(make_idx(np.zeros((3, 28, 28), np.uint8))[:9])
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(make_idx(np.zeros(4, np.uint8)) + b"xx")
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_idx(path, IDX_LABELS_MAGIC)


def test_read_idx_truncated_gzip(tmp_path, make_idx):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(make_idx(np.ones((50, 28, 28), np.uint8)))[:60])
    with pytest.raises(DatasetError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(path, IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_root(tmp_path, write_idx_split, gz):
    images, labels = write_idx_split(tmp_path / "d", "test", n=7, gz=gz)
    ds = load_dataset("mnist", "test", root=tmp_path / "d", download=False)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype.is_floating_point is False
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert ds.classes == [str(i) for i in range(10)] and ds.name == "mnist"


def test_count_mismatch(tmp_path, make_idx):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(make_idx(np.zeros((5, 28, 28), np.uint8)))
    (d / "train-labels-idx1-ubyte").write_bytes(make_idx(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetError, match=r"has 5 images but .*train-labels-idx1-ubyte has 4"):
        load_dataset("mnist", root=d, download=False)


def test_label_out_of_range(tmp_path, make_idx):
    d = tmp_path / "d"
    d.mkdir()
    (d / "train-images-idx3-ubyte").write_bytes(make_idx(np.zeros((2, 28, 28), np.uint8)))
    (d / "train-labels-idx1-ubyte").write_bytes(make_idx(np.array([1, 12], np.uint8)))
    with pytest.raises(DatasetError, match="label 12 out of range"):
        load_dataset("mnist", root=d, download=False)


def test_search_order(tmp_path, monkeypatch, write_idx_split, isolated_env, no_debian):
    root_imgs, _ = write_idx_split(tmp_path / "root" / "fashion-mnist", seed=1)
    env_imgs, _ = write_idx_split(tmp_path / "env" / "fashion-mnist", seed=2)
    cache_imgs, _ = write_idx_split(isolated_env / "fashion-mnist", seed=3)
    monkeypatch.setenv("MWNET_DATA", str(tmp_path / "env"))
    first = load_dataset("fashion-mnist", root=tmp_path / "root", download=False)
    np.testing.assert_array_equal(first.images[:, 0].numpy(), root_imgs)
    second = load_dataset("fashion-mnist", download=False)
    np.testing.assert_array_equal(second.images[:, 0].numpy(), env_imgs)
    monkeypatch.delenv("MWNET_DATA")
    third = load_dataset("fashion-mnist", download=False)
    np.testing.assert_array_equal(third.images[:, 0].numpy(), cache_imgs)
    assert third.classes[0] == "T-shirt/top" and third.classes[9] == "Ankle boot"


def test_debian_dir_is_searched_before_cache(tmp_path, monkeypatch, write_idx_split, isolated_env):
    deb_imgs, _ = write_idx_split(tmp_path / "usr-share", seed=5)
    write_idx_split(isolated_env / "fashion-mnist", seed=6)
    src = dataclasses.replace(FASHION_MNIST, system_dirs=(str(tmp_path / "usr-share"),))
    monkeypatch.setitem(mnist_mod.IDX_SOURCES, "fashion-mnist", src)
    ds = load_dataset("fashion-mnist", download=False)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), deb_imgs)


def test_not_found_message(tmp_path, no_debian):
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", "test", root=tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert "Fashion-MNIST (test split) not found (download=False)" in msg
    assert str(tmp_path / "nowhere") in msg and "no such directory" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "MWNET_DATA" in msg
    assert f"{FASHION_MNIST.base_url}t10k-images-idx3-ubyte.gz" in msg


def _served(tmp_path, make_idx, source, n=6):
    """Tiny gz files for every stem, and a source whose MD5s match them."""
    rng = np.random.default_rng(0)
    files, md5 = {}, {}
    for stem in source.md5:
        if "images" in stem:
            arr = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        else:
            arr = rng.integers(0, 10, n, dtype=np.uint8)
        blob = gzip.compress(make_idx(arr))
        files[source.base_url + stem + ".gz"] = blob
        md5[stem] = hashlib.md5(blob).hexdigest()
    return files, dataclasses.replace(source, md5=md5)


def test_download_into_cache(tmp_path, monkeypatch, make_idx, fake_server, isolated_env):
    files, src = _served(tmp_path, make_idx, MNIST)
    monkeypatch.setitem(mnist_mod.IDX_SOURCES, "mnist", src)
    requested = fake_server(files)
    ds = load_dataset("mnist", "train")
    assert len(ds) == 6
    assert requested == [
        MNIST.base_url + "train-images-idx3-ubyte.gz",
        MNIST.base_url + "train-labels-idx1-ubyte.gz",
    ]
    cached = sorted(p.name for p in (isolated_env / "mnist").iterdir())
    assert cached == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    load_dataset("mnist", "train")  # second call: from the cache, no new request
    assert len(requested) == 2


def test_download_bad_checksum_leaves_nothing(
    tmp_path, monkeypatch, make_idx, fake_server, isolated_env
):
    files, src = _served(tmp_path, make_idx, MNIST)
    monkeypatch.setitem(mnist_mod.IDX_SOURCES, "mnist", src)
    bad = {url: b"not the real file" for url in files}
    fake_server(bad)
    with pytest.raises(DatasetError, match=r"checksum mismatch .*train-images-idx3-ubyte\.gz"):
        load_dataset("mnist")
    assert list((isolated_env / "mnist").iterdir()) == []


def test_real_checksums_are_enforced(fake_server, isolated_env):
    fake_server({MNIST.base_url + "t10k-images-idx3-ubyte.gz": b"wrong bytes"})
    with pytest.raises(DatasetError, match="expected MD5 9fb629c4189551a2d022fa330f9573f3"):
        load_dataset("mnist", "test")


def test_offline_error_lists_places_and_urls(fake_server, no_debian):
    fake_server({})
    with pytest.raises(
        DatasetError,
        match=r"(?s)not found and the download failed.*offline"
        r".*Looked in.*apt-get install",
    ):
        load_dataset("fashion-mnist")


def test_unknown_name_and_split():
    with pytest.raises(
        DatasetError,
        match="unknown dataset 'svhn'; expected one of fashion-mnist, mnist, cifar10, cifar100",
    ):
        load_dataset("svhn")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


def test_name_spellings(tmp_path, write_idx_split):
    write_idx_split(tmp_path / "fashion-mnist")
    for name in ("Fashion-MNIST", "fashion_mnist", "FashionMNIST"):
        assert load_dataset(name, root=tmp_path, download=False).name == "fashion-mnist"


DEBIAN = Path(mnist_mod.DEBIAN_FASHION_MNIST_DIR)


@pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_debian_fashion_mnist():
    train = load_dataset("fashion-mnist", "train", download=False)
    test = load_dataset("fashion-mnist", "test", download=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape[1:] == (1, 28, 28) and test.images.shape[1:] == (1, 28, 28)
    assert train.num_classes == 10 and set(train.labels.unique().tolist()) == set(range(10))
    assert train.labels.bincount().tolist() == [6000] * 10


def test_download_file_keeps_previous_file_on_failure(tmp_path, fake_server):
    from mwnet.data import download_file

    dest = tmp_path / "cache" / "f.gz"
    good = b"payload"
    fake_server({"http://x/f.gz": good})
    download_file("http://x/f.gz", dest, hashlib.md5(good).hexdigest())
    assert dest.read_bytes() == good
    fake_server({"http://x/f.gz": b"tampered"})
    with pytest.raises(DatasetError, match=r"checksum mismatch for http://x/f\.gz"):
        download_file("http://x/f.gz", dest, "0" * 32)
    fake_server({})
    with pytest.raises(DatasetError, match=r"could not download http://x/f\.gz: .*offline"):
        download_file("http://x/f.gz", dest, "0" * 32)
    assert dest.read_bytes() == good and sorted(p.name for p in dest.parent.iterdir()) == ["f.gz"]
