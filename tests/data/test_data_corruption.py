"""Label noise models: rates, structure, reproducibility, and argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mwnet.data import (
    ASYMMETRIC_MAPS,
    ASYMMETRIC_NUM_CLASSES,
    NOISE_TYPES,
    DataError,
    corrupt_labels,
    transition_matrix,
)

FAST = settings(max_examples=40, deadline=None)
N = 3000


def _labels(k: int, n: int = N, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, k, n))


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    """Within ``sigmas`` binomial standard deviations, plus a few samples' worth of slack
    for rates so small that the normal approximation fails (1 flip in 3000 at p = 1e-6)."""
    sd = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    return abs(observed - expected) <= sigmas * sd + 3 / n


def _assert_rates(c, y: torch.Tensor, per_class: list[float]) -> None:
    """The labels that changed, counted here: ``corrupted`` and ``realized_rate`` report
    exactly them, and every class changes at its own expected rate ``per_class[c]`` (so a
    model that corrupts one class too much and another too little fails as well)."""
    changed = c.labels != y
    assert torch.equal(c.corrupted, changed)
    assert c.realized_rate == float(changed.double().mean())
    rates = torch.tensor(per_class, dtype=torch.float64)
    counts = torch.bincount(y, minlength=len(per_class)).double()
    expected = float((rates * counts).sum() / counts.sum())
    assert _within(c.realized_rate, expected, len(y)), (c.realized_rate, expected)
    for cls, rate in enumerate(per_class):
        mask = y == cls
        if mask.any():
            observed = float(changed[mask].double().mean())
            assert _within(observed, rate, int(mask.sum())), (cls, observed, rate)


@FAST
@given(k=st.integers(2, 20), rate=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_uniform_realised_rate(k, rate, seed):
    y = _labels(k)
    c = corrupt_labels(y, k, "uniform", rate, seed)
    # a label is redrawn with probability p, uniformly over all K classes (its own included)
    _assert_rates(c, y, [rate * (k - 1) / k] * k)
    assert c.labels.dtype == torch.int64 and c.corrupted.dtype == torch.bool
    if rate > 0.3:  # a changed label is uniform over the other classes
        offsets = torch.bincount((c.labels - y)[c.corrupted].remainder(k), minlength=k)
        n_moved = int(offsets.sum())
        assert all(_within(float(v) / n_moved, 1 / (k - 1), n_moved) for v in offsets[1:])


@FAST
@given(k=st.integers(2, 20), rate=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_uniform_exclusive(k, rate, seed):
    y = _labels(k)
    c = corrupt_labels(y, k, "uniform-exclusive", rate, seed)
    _assert_rates(c, y, [rate] * k)
    assert torch.all(torch.diagonal(c.expected_transition) == 1 - rate)
    every = corrupt_labels(y, k, "uniform-exclusive", 1.0, seed)
    assert every.corrupted.all()  # never keeps the true label once chosen to flip


@FAST
@given(k=st.integers(3, 15), rate=st.floats(0.05, 1), seed=st.integers(0, 2**32 - 1))
def test_flip2_two_distinct_other_classes(k, rate, seed):
    y = _labels(k)
    c = corrupt_labels(y, k, "flip2", rate, seed)
    t = c.expected_transition
    for cls in range(k):
        targets = [j for j in range(k) if j != cls and t[cls, j] > 0]
        assert len(targets) == 2
        assert torch.allclose(t[cls, targets], torch.tensor([rate / 2, rate / 2], dtype=t.dtype))
        observed = set(c.labels[(y == cls) & c.corrupted].tolist())
        assert observed <= set(targets)
    _assert_rates(c, y, [rate] * k)


@FAST
@given(k=st.integers(2, 20), rate=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_pair_goes_to_next_class(k, rate, seed):
    y = _labels(k)
    c = corrupt_labels(y, k, "pair", rate, seed)
    assert torch.equal(c.labels[c.corrupted], (y[c.corrupted] + 1) % k)
    _assert_rates(c, y, [rate] * k)


@pytest.mark.parametrize("noise", list(ASYMMETRIC_MAPS))
def test_asymmetric_maps(noise):
    k = ASYMMETRIC_NUM_CLASSES[noise]
    y = _labels(k, 5000)
    c = corrupt_labels(y, k, noise, 0.4, seed=3)
    mapping = ASYMMETRIC_MAPS[noise]
    for src in range(k):
        moved = c.labels[(y == src) & c.corrupted]
        if src in mapping:
            assert set(moved.tolist()) == {mapping[src]}
        else:
            assert moved.numel() == 0
    # each mapped class moves at p, the others never
    _assert_rates(c, y, [0.4 if src in mapping else 0.0 for src in range(k)])


def test_asymmetric_cifar10_pairs():
    assert ASYMMETRIC_MAPS["asymmetric-cifar10"] == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    with pytest.raises(DataError, match="defined for 10 classes"):
        corrupt_labels([0, 1], 5, "asymmetric-cifar10", 0.2, 0)


def test_asymmetric_cifar100_rows():
    """Blocks of 5 consecutive fine labels; each class to the next one, circularly."""
    t = transition_matrix("asymmetric-cifar100", 100, 0.3)
    assert t.shape == (100, 100)
    # 100 float64 terms: within 2γ_100 ≈ 2e-14 of 1, far inside allclose's 1e-5
    assert torch.allclose(t.sum(1), torch.ones(100, dtype=torch.float64))
    for src, dst in [
        (0, 1),
        (3, 4),
        (4, 0),
        (5, 6),
        (9, 5),
        (42, 43),
        (44, 40),
        (95, 96),
        (99, 95),
    ]:
        expected = torch.zeros(100, dtype=torch.float64)
        expected[src], expected[dst] = 0.7, 0.3
        assert torch.equal(t[src], expected), src
    assert ASYMMETRIC_MAPS["asymmetric-cifar100"] == {
        c: 5 * (c // 5) + (c + 1) % 5 for c in range(100)
    }
    full = transition_matrix("asymmetric-cifar100", 100, 1.0)
    assert torch.all(torch.diagonal(full) == 0)  # at p = 1 every class moves


def test_asymmetric_cifar100_realised_rate():
    n = 20000
    y = _labels(100, n, seed=4)
    c = corrupt_labels(y, 100, "asymmetric-cifar100", 0.4, seed=5)
    _assert_rates(c, y, [0.4] * 100)  # every class has a target
    moved = c.corrupted
    assert torch.equal(c.labels[moved], y[moved] - y[moved] % 5 + (y[moved] + 1) % 5)
    assert torch.equal(c.labels // 5, y // 5)  # never leaves its block
    # sampling error, not rounding: ~200 samples a class, a binomial standard error of
    # sqrt(0.4·0.6 / 200) ≈ 0.035 per entry, so 0.15 is over 4 sigma
    assert torch.allclose(c.transition, c.expected_transition, atol=0.15)


def test_asymmetric_cifar100_needs_100_classes():
    with pytest.raises(
        DataError, match="asymmetric-cifar100 noise is defined for 100 classes, got num_classes=10"
    ):
        corrupt_labels([0, 1], 10, "asymmetric-cifar100", 0.2, 0)
    with pytest.raises(DataError, match="defined for 100 classes, got num_classes=20"):
        transition_matrix("asymmetric-cifar100", 20, 0.2)
    with pytest.raises(DataError, match="asymmetric-cifar10 noise is defined for 10 classes"):
        corrupt_labels([0, 1], 100, "asymmetric-cifar10", 0.2, 0)


def test_empirical_transition_matches_expected():
    y = _labels(5, 50000)
    c = corrupt_labels(y, 5, "flip2", 0.4, seed=1)
    # sampling error: 10000 samples a class, entries 0.2 or 0.6, a binomial standard error
    # of at most sqrt(0.6·0.4 / 10000) ≈ 0.005, so 0.02 is 4 sigma
    assert torch.allclose(c.transition, c.expected_transition, atol=0.02)
    # a row of 5 float64 shares: within 2γ_5 ≈ 1e-15 of 1, far inside allclose's 1e-5
    assert torch.allclose(c.transition.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(c.expected_transition, transition_matrix("flip2", 5, 0.4, seed=1))


def test_empty_class_row_is_zero():
    c = corrupt_labels([0, 0, 2], 4, "uniform", 0.5, 0)
    assert c.transition[1].sum() == 0 and c.transition[3].sum() == 0


@FAST
@given(
    noise=st.sampled_from(["uniform", "uniform-exclusive", "flip2", "pair"]),
    rate=st.floats(0.2, 0.9),
    seed=st.integers(0, 2**31),
)
def test_seed_reproducibility(noise, rate, seed):
    y = _labels(10, 500)
    a = corrupt_labels(y, 10, noise, rate, seed)
    b = corrupt_labels(y, 10, noise, rate, seed)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.transition, b.transition)
    other = corrupt_labels(y, 10, noise, rate, seed + 1)
    assert not torch.equal(a.labels, other.labels)


def test_input_is_not_modified():
    y = _labels(10, 100)
    before = y.clone()
    corrupt_labels(y, 10, "uniform", 1.0, 0)
    assert torch.equal(y, before)


def test_rate_zero_is_identity_for_all_models(tmp_path):
    for noise in NOISE_TYPES:
        k = ASYMMETRIC_NUM_CLASSES.get(noise, 10)
        y = _labels(k, 200)
        extra = {"matrix": np.full((k, k), 1 / k)} if noise == "matrix" else {}
        c = corrupt_labels(y, k, noise, 0.0, 7, **extra)
        assert torch.equal(c.labels, y) and c.realized_rate == 0.0


def test_user_matrix_from_array_npy_csv(tmp_path):
    m = np.eye(3)[[1, 2, 0]]  # a deterministic cycle 0->1->2->0
    np.save(tmp_path / "m.npy", m)
    np.savetxt(tmp_path / "m.csv", m, delimiter=",")
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    for source in (m, torch.from_numpy(m), tmp_path / "m.npy", str(tmp_path / "m.csv")):
        c = corrupt_labels(y, 3, "matrix", 1.0, 0, matrix=source)
        assert c.labels.tolist() == [1, 2, 0, 0, 2, 1] and c.realized_rate == 1.0
    half = transition_matrix("matrix", 3, 0.5, matrix=m)
    assert torch.allclose(half, torch.from_numpy(0.5 * np.eye(3) + 0.5 * m))


def test_user_matrix_tolerance():
    m = np.full((2, 2), 0.5)
    m[0] += [5e-7, 0]
    corrupt_labels([0, 1], 2, "matrix", 1.0, 0, matrix=m)  # within 1e-6: accepted
    m[0] += [1e-5, 0]
    with pytest.raises(DataError, match=r"rows must sum to 1 \(within 1e-06\); row 0 sums to"):
        corrupt_labels([0, 1], 2, "matrix", 1.0, 0, matrix=m)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, r"noise rate must be in \[0, 1\], got 1.5"),
        ({"rate": -0.1}, r"noise rate must be in \[0, 1\]"),
        ({"rate": float("nan")}, r"noise rate must be in \[0, 1\]"),
        (
            {"noise": "gaussian"},
            "unknown noise 'gaussian'; expected one of uniform, "
            "uniform-exclusive, flip2, pair, asymmetric-cifar10, "
            "asymmetric-cifar100, asymmetric-fashion-mnist, matrix",
        ),
        ({"labels": [0, 1, 10]}, r"labels out of range: expected values in \[0, 10\), got \[0, 10"),
        ({"labels": [0, -1]}, r"labels out of range"),
        ({"labels": [[0, 1]]}, "labels must be 1-d"),
        ({"labels": [0.5, 1.0]}, "labels must be integers"),
        ({"noise": "matrix"}, "needs the matrix argument"),
        ({"noise": "matrix", "matrix": np.eye(3)}, r"must be 10 x 10, got shape \(3, 3\)"),
        ({"noise": "matrix", "matrix": -np.eye(10)}, "non-negative"),
        ({"matrix": np.eye(10)}, "use noise='matrix'"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"num_classes": 0, "labels": []}, "num_classes must be a positive integer"),
    ],
)
def test_errors(kwargs, message):
    args = {"labels": [0, 1, 2], "num_classes": 10, "noise": "uniform", "rate": 0.2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(DataError, match=message):
        corrupt_labels(**args)


def test_small_class_counts_and_bad_matrix_files(tmp_path):
    with pytest.raises(DataError, match="flip2 noise needs at least 3 classes"):
        corrupt_labels([0, 1], 2, "flip2", 0.2, 0)
    with pytest.raises(DataError, match=r"m\.txt: transition matrix file must end in \.npy or"):
        transition_matrix("matrix", 2, 1.0, matrix=tmp_path / "m.txt")
    with pytest.raises(DataError, match=r"gone\.npy: cannot read transition matrix"):
        transition_matrix("matrix", 2, 1.0, matrix=tmp_path / "gone.npy")


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        corrupt_labels([0], 2, "uniform", 2.0, 0)
