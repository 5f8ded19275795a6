"""Device batching: coverage, augmentation correctness, determinism and resume."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mwnet.data import (
    CIFAR_AUGMENT,
    CIFAR_NORMALIZE,
    Augment,
    DataError,
    DeviceBatches,
    EndlessBatches,
    Normalize,
    gather_augmented,
)


def _data(n=50, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % 10


def test_epoch_covers_every_sample_once():
    images, labels = _data(53)
    batches = DeviceBatches(images, labels, 10, "cpu", indices_too=True)
    assert len(batches) == 6
    out = list(batches)
    assert [b[0].shape[0] for b in out] == [10, 10, 10, 10, 10, 3]
    idx = torch.cat([b[2] for b in out])
    assert torch.equal(idx.sort().values, torch.arange(53))
    for x, y, i in out:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(y, labels[i]) and torch.allclose(x, images[i].float() / 255)
    assert batches.epoch == 1


def test_drop_last_and_no_shuffle():
    images, labels = _data(53)
    batches = DeviceBatches(
        images, labels, 10, "cpu", shuffle=False, drop_last=True, indices_too=True
    )
    assert len(batches) == 5
    idx = torch.cat([b[2] for b in batches])
    assert torch.equal(idx, torch.arange(50))


def test_normalize_values():
    images, labels = _data(4)
    x, _ = next(
        iter(DeviceBatches(images, labels, 4, "cpu", shuffle=False, normalize=CIFAR_NORMALIZE))
    )
    mean = torch.tensor(CIFAR_NORMALIZE.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_NORMALIZE.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (images.float() / 255 - mean) / std, atol=1e-5)
    stats = Normalize.from_images(images)
    assert len(stats.mean) == 3 and all(0 < s < 1 for s in stats.std)


def _candidates(image, padding, mode):
    """Every crop (and its flip) of the padded image, computed the obvious way."""
    _, h, w = image.shape
    if mode == "reflect":
        padded = F.pad(image[None].float(), (padding,) * 4, mode="reflect")[0]
    else:
        padded = F.pad(image.float(), (padding,) * 4)
    out = []
    for dy, dx in itertools.product(range(2 * padding + 1), repeat=2):
        crop = padded[:, dy : dy + h, dx : dx + w]
        out += [crop, crop.flip(-1)]
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_augmentation_matches_reference(mode):
    images, _ = _data(40, c=3, h=6, w=7)
    aug = Augment(padding=3, pad_mode=mode, flip=True)
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(40, generator=g)
    out = gather_augmented(images, idx, aug, g)
    assert out.dtype == torch.uint8 and out.shape == (40, 3, 6, 7)
    seen = set()
    for b in range(40):
        cands = _candidates(images[idx[b]], 3, mode)
        hits = (cands == out[b].float()).flatten(1).all(1).nonzero().flatten().tolist()
        assert hits, f"sample {b} is not a valid crop/flip of its source"
        seen.update(hits)
    assert len(seen) > 20  # many different shifts and flips occur


def test_flip_only_and_identity():
    images, _ = _data(200)
    idx = torch.arange(200)
    g = torch.Generator().manual_seed(0)
    out = gather_augmented(images, idx, Augment(padding=0, flip=True), g)
    flipped = (out == images.flip(-1)).flatten(1).all(1) & ~(out == images).flatten(1).all(1)
    assert 60 < int(flipped.sum()) < 140
    assert torch.equal(gather_augmented(images, idx, None), images)


def _run(batches, n):
    return [tuple(t.clone() for t in b) for b in itertools.islice(_forever(batches), n)]


def _forever(batches):
    while True:
        yield from batches


def _same(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(s, t) for s, t in zip(x, y, strict=True)) for x, y in zip(a, b, strict=True)
    )


def _make(seed=0, cls=DeviceBatches):
    images, labels = _data(37)
    return cls(images, labels, 8, "cpu", augment=CIFAR_AUGMENT, seed=seed, indices_too=True)


def test_same_seed_same_sequence_different_seed_differs():
    assert _same(_run(_make(0), 12), _run(_make(0), 12))
    assert not _same(_run(_make(0), 12), _run(_make(1), 12))


@pytest.mark.parametrize("stop", [3, 5, 7, 12])  # mid-epoch, exactly at an epoch end, ...
def test_resume_mid_epoch(stop):
    reference = _run(_make(), 20)
    first = _make()
    head = _run(first, stop)
    state = first.state_dict()
    resumed = _make(seed=99)  # the saved state overrides the seed
    resumed.load_state_dict(state)
    tail = _run(resumed, 20 - stop)
    assert _same(head + tail, reference)
    assert resumed.epoch == 4 and first.epoch == stop // 5


def test_state_survives_torch_save(tmp_path):
    batches = _make()
    _run(batches, 2)
    torch.save(batches.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = _make()
    other.load_state_dict(state)
    assert _same(_run(other, 4), _run(batches, 4))


def test_state_mismatch():
    state = _make().state_dict()
    images, labels = _data(36)
    with pytest.raises(DataError, match="state was saved with num_samples=37"):
        DeviceBatches(images, labels, 8, "cpu").load_state_dict(state)


def test_endless_batches_full_and_reshuffled():
    images, labels = _data(10)
    meta = EndlessBatches(images, labels, 4, "cpu", indices_too=True)
    batches = _run(meta, 10)
    assert all(b[0].shape[0] == 4 for b in batches)
    stream = torch.cat([b[2] for b in batches])
    passes = stream[:40].view(4, 10)
    for p in passes:
        assert torch.equal(p.sort().values, torch.arange(10))
    assert not torch.equal(passes[0], passes[1]) and meta.passes == 4
    big = EndlessBatches(images, labels, 25, "cpu")
    assert next(big)[0].shape == (25, 3, 8, 8)


@pytest.mark.parametrize("stop", [1, 2, 5, 9])
def test_endless_resume(stop):
    reference = _run(_make(cls=EndlessBatches), 15)
    first = _make(cls=EndlessBatches)
    head = _run(first, stop)
    resumed = _make(seed=5, cls=EndlessBatches)
    resumed.load_state_dict(first.state_dict())
    assert _same(head + _run(resumed, 15 - stop), reference)


def test_errors():
    images, labels = _data(4, h=4, w=4)
    with pytest.raises(DataError, match="unknown pad_mode 'edge'"):
        Augment(pad_mode="edge")
    with pytest.raises(DataError, match="reflect padding 4 must be smaller"):
        DeviceBatches(images, labels, 2, "cpu", augment=Augment(padding=4))
    DeviceBatches(images, labels, 2, "cpu", augment=Augment(padding=4, pad_mode="zero"))
    with pytest.raises(DataError, match="normalize has 1 channels, images have 3"):
        DeviceBatches(images, labels, 2, "cpu", normalize=Normalize((0.5,), (0.2,)))
    with pytest.raises(DataError, match="images must be a uint8 tensor"):
        DeviceBatches(images.float(), labels, 2, "cpu")
    with pytest.raises(DataError, match=r"labels must have shape \(4,\)"):
        DeviceBatches(images, labels[:3], 2, "cpu")
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        DeviceBatches(images, labels, 0, "cpu")
    with pytest.raises(DataError, match="std must be positive"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(DataError, match="at least one sample"):
        EndlessBatches(images[:0], labels[:0], 2, "cpu")


def test_empty_dataset_epoch():
    images, labels = _data(3)
    batches = DeviceBatches(images, labels, 4, "cpu", drop_last=True)
    assert len(batches) == 0 and list(batches) == []


def test_float_labels_rejected():
    images, _ = _data(4)
    with pytest.raises(DataError, match="labels must be integers"):
        DeviceBatches(images, torch.zeros(4), 2, "cpu")
