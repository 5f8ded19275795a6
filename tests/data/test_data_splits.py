"""Long-tail subsampling and the meta split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mwnet.data import (
    DataError,
    default_meta_per_class,
    long_tail_counts,
    long_tail_indices,
    meta_split,
)

FAST = settings(max_examples=40, deadline=None)


def test_cifar10_if100_total():
    counts = long_tail_counts(4990, 10, 100)
    assert counts[0] == 4990 and counts[-1] == 49
    assert sum(counts) == 12380


def test_cifar100_head_and_tail():
    counts = long_tail_counts(490, 100, 100)
    assert counts[0] == 490 and counts[-1] == 4 and len(counts) == 100


@FAST
@given(n_max=st.integers(1, 6000), k=st.integers(2, 120), imb=st.floats(1, 500))
def test_exp_counts_follow_formula(n_max, k, imb):
    counts = long_tail_counts(n_max, k, imb)
    assert counts == [int(n_max * (1 / imb) ** (c / (k - 1))) for c in range(k)]
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_step_profile_and_edge_cases():
    assert long_tail_counts(100, 4, 10, "step") == [100, 100, 10, 10]
    assert long_tail_counts(100, 5, 10, "step") == [100, 100, 100, 10, 10]
    assert long_tail_counts(100, 1, 50) == [100]
    assert long_tail_counts(100, 3, 1) == [100, 100, 100]
    with pytest.raises(DataError, match="unknown long-tail profile 'linear'"):
        long_tail_counts(100, 3, 10, "linear")
    with pytest.raises(DataError, match="imbalance_factor must be >= 1"):
        long_tail_counts(100, 3, 0.5)


@FAST
@given(k=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_long_tail_indices_counts(k, seed, data):
    labels = np.random.default_rng(seed).integers(0, k, 400)
    avail = np.bincount(labels, minlength=k)
    counts = [data.draw(st.integers(0, int(a))) for a in avail]
    idx = long_tail_indices(labels, counts, seed)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
    assert idx.unique().numel() == idx.numel()
    assert np.bincount(labels[idx.numpy()], minlength=k).tolist() == counts
    assert torch.equal(idx, long_tail_indices(labels, counts, seed))


def test_long_tail_indices_seed_changes_choice():
    labels = np.repeat(np.arange(3), 100)
    a = long_tail_indices(labels, [50, 20, 5], 0)
    assert not torch.equal(a, long_tail_indices(labels, [50, 20, 5], 1))


def test_long_tail_indices_errors():
    with pytest.raises(DataError, match="class 1 has 2 samples, fewer than the 3 requested"):
        long_tail_indices([0, 0, 0, 1, 1], [1, 3], 0)
    with pytest.raises(DataError, match="labels out of range"):
        long_tail_indices([0, 2], [1, 1], 0)


@FAST
@given(k=st.integers(1, 15), per_class=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_meta_split_properties(k, per_class, seed):
    labels = np.random.default_rng(seed).integers(0, k, 60 * k)
    labels[: k * per_class] = np.repeat(np.arange(k), per_class)  # every class has enough
    train, meta = meta_split(labels, k, per_class, seed)
    assert np.intersect1d(train.numpy(), meta.numpy()).size == 0
    assert torch.equal(torch.cat([train, meta]).sort().values, torch.arange(labels.size))
    assert torch.equal(train, train.sort().values) and torch.equal(meta, meta.sort().values)
    assert np.bincount(labels[meta.numpy()], minlength=k).tolist() == [per_class] * k
    again = meta_split(torch.from_numpy(labels), k, per_class, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], meta)


def test_meta_split_seed_changes_choice():
    labels = np.repeat(np.arange(10), 500)
    _, a = meta_split(labels, 10, 100, 0)
    _, b = meta_split(labels, 10, 100, 1)
    assert not torch.equal(a, b)


def test_meta_split_then_long_tail_pipeline():
    labels = np.repeat(np.arange(10), 5000)  # a CIFAR-10-sized balanced set
    train, meta = meta_split(labels, 10, default_meta_per_class("imbalance", 10), seed=0)
    counts = long_tail_counts(4990, 10, 100)
    picked = train[long_tail_indices(labels[train.numpy()], counts, seed=0)]
    assert picked.numel() == 12380 and np.intersect1d(picked.numpy(), meta.numpy()).size == 0


def test_meta_split_errors():
    with pytest.raises(DataError, match="class 2 has 1 samples, fewer than the 2 meta"):
        meta_split([0, 0, 1, 1, 2], 3, 2, 0)
    with pytest.raises(DataError, match="per_class must be a positive integer"):
        meta_split([0, 1], 2, 0, 0)
    with pytest.raises(DataError, match="labels out of range"):
        meta_split([0, 3], 2, 1, 0)


def test_default_meta_per_class():
    assert default_meta_per_class("noise", 10) == 100
    assert default_meta_per_class("noise", 100) == 10
    assert default_meta_per_class("noise", 2000) == 1
    assert default_meta_per_class("imbalance", 100) == 10
    with pytest.raises(DataError, match="unknown setting 'clean'"):
        default_meta_per_class("clean", 10)
