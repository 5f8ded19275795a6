"""Instance-dependent label noise (Xia et al. 2020): the generator against a reference
written one sample at a time, its flip rates, its realised rate, its dependence on the
image, reproducibility, and the path through the config into a run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rounding import gamma, unit_roundoff

import mwnet.data.instance_noise as instance_noise
from mwnet.data import DataError, corrupt, corrupt_instances, corrupt_labels
from mwnet.data.instance_noise import FLIP_RATE_STD, instance_draws
from mwnet.run import read_json
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config
from mwnet.train.experiment import prepare_data

F64 = torch.float64


def _phi(z: float) -> float:
    return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _truncated_mean(rate: float, std: float = 0.1) -> float:
    """Mean of N(rate, std^2) truncated to [0, 1] (the textbook formula)."""
    a, b = -rate / std, (1 - rate) / std
    return rate + std * (_phi(a) - _phi(b)) / (_cdf(b) - _cdf(a))


def _share_below_rate(rate: float, std: float = 0.1) -> float:
    """P(q < rate) for q ~ N(rate, std^2) truncated to [0, 1]."""
    a, b = -rate / std, (1 - rate) / std
    return (_cdf(0.0) - _cdf(a)) / (_cdf(b) - _cdf(a))


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _reference(images, labels, k, draws, *, exclude_true=True, flip_rates=None):
    """Xia et al.'s generator from the paper's algorithm, one sample and one class at a
    time in Python floats: scores x W_y (pixels / 255), the true class excluded, the rest
    a softmax scaled by q, 1 - q on the true class, then the first class whose running
    sum exceeds the sample's uniform. Returns (labels, rows, largest sum of |terms| of a
    score). ``exclude_true=False`` and a constant ``flip_rates`` are the planted bugs."""
    q = draws.flip_rates if flip_rates is None else flip_rates
    new, rows, largest = [], [], 0.0
    for i, (image, y) in enumerate(zip(images, labels, strict=True)):
        x = [v / 255.0 for v in image.reshape(-1).tolist()]
        w = draws.projection(int(y))
        terms = [[x[f] * w[f, j] for f in range(len(x))] for j in range(k)]
        scores = [math.fsum(t) for t in terms]  # correctly rounded sums
        largest = max(largest, *(math.fsum(abs(v) for v in t) for t in terms))
        others = [j for j in range(k) if j != y] if exclude_true else list(range(k))
        top = max(scores[j] for j in others)
        e = {j: math.exp(scores[j] - top) for j in others}
        total = math.fsum(e.values())
        row = [0.0] * k
        for j in others:
            row[j] = q[i] * (e[j] / total)
        row[y] += 1.0 - q[i]
        running, label = 0.0, None
        for j in range(k):
            running += row[j]
            if draws.uniforms[i] < running:
                label = j
                break
        new.append(label if label is not None else max(j for j in range(k) if row[j] > 0))
        rows.append(row)
    return np.array(new), np.array(rows), largest


def _class_means(rows: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, k))
    for c in range(k):
        if (labels == c).any():
            out[c] = rows[labels == c].mean(axis=0)
    return out


N_TINY, K_TINY, SHAPE_TINY = 60, 4, (1, 3, 4)


@pytest.fixture(scope="module")
def tiny():
    images = _images(N_TINY, SHAPE_TINY, seed=1)
    labels = np.random.default_rng(2).integers(0, K_TINY, N_TINY)
    draws = instance_draws(N_TINY, 12, K_TINY, 0.35, seed=11)
    return images, labels, draws


def test_matches_the_reference_given_the_same_draws(tiny) -> None:
    images, labels, draws = tiny
    c = corrupt_instances(images, labels, K_TINY, 0.35, seed=11)
    ref, rows, largest = _reference(images, labels, K_TINY, draws)
    assert c.labels.tolist() == ref.tolist()
    assert 0.2 < c.realized_rate < 0.6  # the fixture flips enough labels to show a bug
    # Rows differ only by rounding. A score is a 12-term sum: BLAS is within gamma_12 of
    # the exact value times the sum of |terms|, fsum within u, so the two differ by at
    # most delta = (gamma_12 + u) * largest. A softmax entry moves by at most
    # 2 * (2 * delta) relative (its own shifted score and the shifted normaliser; doubled
    # against the second-order term), plus the roundings of exp, a K-term sum, the
    # division and the product with q (gamma_{K+3}, both sides); a class mean of n rows
    # adds gamma_n of its entries (each <= 1), both sides.
    delta = (gamma(12, F64) + unit_roundoff(F64)) * largest
    tol = 8 * delta + 2 * gamma(K_TINY + 3, F64) + 2 * gamma(N_TINY, F64)
    expected = torch.from_numpy(_class_means(rows, labels, K_TINY))
    assert (c.expected_transition - expected).abs().max() <= tol
    assert c.noise == "instance" and c.rate == 0.35 and c.seed == 11


def test_the_planted_bugs_give_other_labels(tiny) -> None:
    """The reference comparison can fail: a generator that leaves the true class in the
    softmax, or gives every sample the same flip rate, draws other labels from the same
    random numbers on this fixture."""
    images, labels, draws = tiny
    right = corrupt_instances(images, labels, K_TINY, 0.35, seed=11).labels.numpy()
    kept_true, _, _ = _reference(images, labels, K_TINY, draws, exclude_true=False)
    constant_q, _, _ = _reference(images, labels, K_TINY, draws, flip_rates=np.full(N_TINY, 0.35))
    assert (kept_true != right).sum() >= 2
    assert (constant_q != right).sum() >= 2


def test_flip_rates_follow_the_truncated_normal() -> None:
    """q ~ N(rate, 0.1^2) truncated to [0, 1]. Checked at rate 0.05, where the truncation
    matters: the mean against the textbook formula (a truncated normal's sd is at most
    the normal's 0.1, so 5 standard errors are 0.5 / sqrt(n)), and the share below the
    rate as a binomial proportion (std 0 would give 0, std 0.01 0.5, no truncation 0.5
    and negative rates)."""
    n, rate = 40_000, 0.05
    q = instance_draws(n, 1, 2, rate, seed=5).flip_rates
    assert FLIP_RATE_STD == 0.1
    assert q.min() >= 0.0 and q.max() <= 1.0
    assert abs(q.mean() - _truncated_mean(rate)) <= 5 * 0.1 / math.sqrt(n)
    p = _share_below_rate(rate)  # 0.277
    assert abs((q < rate).mean() - p) <= 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_realised_rate_is_the_mean_flip_rate(rate) -> None:
    """A label stays with probability 1 - q_i and the q_i are independent, so the flips
    are independent Bernoulli draws with the truncated normal's mean: the realised rate
    lies within 5 binomial standard errors of it. That mean is the rate from 0.3 to 0.7
    (0.40001 at 0.4), above it near 0 (0.080 at rate 0, as in the authors' code)."""
    n, k = 20_000, 5
    labels = np.random.default_rng(3).integers(0, k, n)
    c = corrupt_instances(_images(n, (4, 4)), labels, k, rate, seed=7)
    m = _truncated_mean(rate)
    assert abs(c.realized_rate - m) <= 5 * math.sqrt(m * (1 - m) / n)
    assert torch.equal(c.corrupted, c.labels != torch.from_numpy(labels))
    # each class keeps its label with probability 1 - (its mean q), exactly in expectation
    q = instance_draws(n, 16, k, rate, seed=7).flip_rates
    for cls in range(k):
        keep = 1 - q[labels == cls]
        assert float(c.expected_transition[cls, cls]) == pytest.approx(
            keep.mean(), rel=2 * gamma(len(keep), F64)
        )
        assert float(c.expected_transition[cls].sum()) == pytest.approx(1.0, abs=1e-12)


def test_same_seed_same_labels_and_no_global_generator_is_touched() -> None:
    n, k = 500, 10
    images, labels = _images(n, (3, 4, 4)), np.random.default_rng(0).integers(0, k, n)
    torch.manual_seed(0)
    np.random.seed(0)
    first = corrupt_instances(images, labels, k, 0.4, seed=3)
    torch.manual_seed(1)
    np.random.seed(1)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    again = corrupt_instances(torch.from_numpy(images), torch.from_numpy(labels), k, 0.4, 3)
    assert torch.equal(first.labels, again.labels)
    assert torch.equal(first.expected_transition, again.expected_transition)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    other = corrupt_instances(images, labels, k, 0.4, seed=4)
    assert (other.labels != first.labels).sum() > 50


def test_chunks_and_an_index_change_nothing(monkeypatch) -> None:
    """Reading 7 images at a time, or a subset through ``index``, draws the same labels as
    one pass over a copy."""
    n, k = 300, 6
    images, labels = _images(n, (2, 3, 3)), np.random.default_rng(1).integers(0, k, n)
    whole = corrupt_instances(images, labels, k, 0.5, seed=2)
    monkeypatch.setattr(instance_noise, "CHUNK", 7)
    chunked = corrupt_instances(images, labels, k, 0.5, seed=2)
    assert torch.equal(chunked.labels, whole.labels)
    pick = np.random.default_rng(4).permutation(n)[:120]
    copy = corrupt_instances(images[pick], labels[pick], k, 0.5, seed=2)
    through_index = corrupt_instances(images, labels[pick], k, 0.5, seed=2, index=pick)
    assert torch.equal(copy.labels, through_index.labels)


def test_where_a_label_flips_depends_on_the_image() -> None:
    """Two clusters of class 0: images lit on pixel 0 and images lit on pixel 1. Their
    scores are rows 0 and 1 of W_0, so their flipped labels follow two different
    distributions; a class-conditional model would give both clusters one distribution.
    Each cluster's share of flips to class 1 lies within 5 binomial standard errors of its
    own softmax, and the two shares differ by far more than that."""
    n, k, rate, seed = 4000, 3, 0.5, 7
    images = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    cluster = np.arange(n) % 2
    images[cluster == 0, 0, 0, 0] = 255
    images[cluster == 1, 0, 0, 1] = 255
    labels = np.zeros(n, dtype=np.int64)
    c = corrupt_instances(images, labels, k, rate, seed)
    w = instance_draws(n, 4, k, rate, seed).projection(0)
    new = c.labels.numpy()
    shares = []
    for pixel in (0, 1):
        own = 1 / (1 + math.exp(w[pixel, 2] - w[pixel, 1]))  # softmax over classes 1, 2
        flipped = new[(cluster == pixel) & (new != 0)]
        share = float((flipped == 1).mean())
        assert abs(share - own) <= 5 * math.sqrt(own * (1 - own) / len(flipped)), pixel
        shares.append(own)
    # this seed's W_0 separates the clusters (0.29 and 0.61) by more than both 5-SE bands
    assert abs(shares[0] - shares[1]) > 0.25


def test_argument_errors() -> None:
    images, labels = _images(4, (2, 2)), [0, 1, 0, 1]
    with pytest.raises(DataError, match="at least 2 classes"):
        corrupt_instances(images, [0, 0, 0, 0], 1, 0.2, 0)
    with pytest.raises(DataError, match="3 images for 4 labels"):
        corrupt_instances(images[:3], labels, 2, 0.2, 0)
    with pytest.raises(DataError, match="uint8 or floating point"):
        corrupt_instances(images.astype(np.int32), labels, 2, 0.2, 0)
    with pytest.raises(DataError, match=r"noise rate must be in \[0, 1\]"):
        corrupt_instances(images, labels, 2, 1.5, 0)
    with pytest.raises(DataError, match="instance noise reads the images: pass images="):
        corrupt(labels, 2, "instance", 0.2, 0)
    with pytest.raises(DataError, match=r"unknown noise 'instances'; expected one of .*instance"):
        corrupt(labels, 2, "instances", 0.2, 0, images=images)


def test_corrupt_dispatches_by_name() -> None:
    """``corrupt`` gives what the model's own function gives, for both kinds."""
    images, labels = _images(50, (2, 2)), np.random.default_rng(0).integers(0, 3, 50)
    a = corrupt(labels, 3, "instance", 0.4, 1, images=images)
    assert torch.equal(a.labels, corrupt_instances(images, labels, 3, 0.4, 1).labels)
    b = corrupt(labels, 3, "pair", 0.4, 1, images=images)  # the images are not read
    assert torch.equal(b.labels, corrupt_labels(labels, 3, "pair", 0.4, 1).labels)


# --- through the config into a run ---------------------------------------------------


@pytest.fixture
def fmnist_root(tmp_path, write_idx_split) -> Path:
    root = tmp_path / "fmnist"
    write_idx_split(root, "train", n=300, seed=0)
    write_idx_split(root, "test", n=20, seed=1)
    return root


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=2",
        "data.noise=instance",
        "data.noise_rate=0.4",
        "data.batch_size=50",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=1",
        "method.name=ce",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        "name=instance",
        *extra,
    ]


def test_the_config_accepts_it_and_names_it_among_the_choices(tmp_path) -> None:
    assert load_config(None, _overrides(tmp_path, tmp_path)).data.noise == "instance"
    with pytest.raises(ConfigError, match=r"data.noise='instancee' is not valid.*instance"):
        load_config(None, _overrides(tmp_path, tmp_path, "data.noise=instancee"))


def test_a_run_corrupts_its_training_part_only_and_records_the_rate(fmnist_root, tmp_path):
    cfg = load_config(None, _overrides(fmnist_root, tmp_path))
    data = prepare_data(cfg)
    # the labels are those of the generator applied to the training part after the split
    direct = corrupt_instances(data.train_images, data.true_labels, 10, 0.4, int(cfg.seed))
    assert torch.equal(data.train_labels, direct.labels)
    assert torch.equal(data.corrupted, data.train_labels != data.true_labels)
    assert data.noise_known and data.realized_noise_rate == direct.realized_rate
    assert len(data.meta_labels) == 20 and len(data.train_labels) == 280
    # the clean meta set keeps the file's labels: find each meta image in the file
    images, labels = _file(fmnist_root)
    given = {images[i].tobytes(): int(labels[i]) for i in range(len(labels))}
    meta = [given[m.numpy().tobytes()] for m in data.meta_images]
    assert meta == data.meta_labels.tolist()
    trainer, run = loop.start(cfg, quiet=True)
    trainer.fit()
    summary = read_json(run / "summary.json")
    assert summary["noise_known"] is True
    assert summary["realized_noise_rate"] == round(direct.realized_rate, 4)
    true_counts = torch.bincount(data.true_labels, minlength=10).tolist()
    given_counts = torch.bincount(data.train_labels, minlength=10).tolist()
    assert summary["class_counts"]["true"] == true_counts
    assert summary["class_counts"]["given"] == given_counts


def _file(root: Path) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    raw = gzip.decompress((root / "train-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 1, 28, 28)
    raw = gzip.decompress((root / "train-labels-idx1-ubyte.gz").read_bytes())
    return images, np.frombuffer(raw[8:], dtype=np.uint8)
