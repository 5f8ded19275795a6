"""The validation split: a seeded, exact partition of the training positions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mwnet.data import DataError, val_split


@given(n=st.integers(2, 400), share=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_a_sorted_exact_partition_of_the_requested_size(n: int, share: float, seed: int):
    size = min(int(share * n), n - 1)
    train, val = val_split(n, size, seed)
    assert len(val) == size and len(train) == n - size
    both = np.concatenate([train.numpy(), val.numpy()])
    assert sorted(both.tolist()) == list(range(n))
    assert np.all(np.diff(train.numpy()) > 0) and np.all(np.diff(val.numpy()) > 0)


def test_the_seed_alone_decides_the_draw() -> None:
    a, b = val_split(1000, 100, 3), val_split(1000, 100, 3)
    assert a[1].tolist() == b[1].tolist()
    assert val_split(1000, 100, 4)[1].tolist() != a[1].tolist()


def test_the_draw_is_not_the_seeds_plain_stream() -> None:
    # the subset and the meta split draw from default_rng(seed); the validation split must
    # not pick the same positions they would
    plain = np.sort(np.random.default_rng(3).choice(1000, 100, replace=False))
    assert val_split(1000, 100, 3)[1].tolist() != plain.tolist()


def test_every_position_is_held_out_about_equally_often() -> None:
    counts = np.zeros(50)
    for seed in range(2000):
        counts[val_split(50, 10, seed)[1].numpy()] += 1
    # each position: Binomial(2000, 0.2), mean 400, std about 18
    assert counts.min() > 330 and counts.max() < 470


@pytest.mark.parametrize(("size", "match"), [(10, "nothing"), (11, "nothing"), (-1, "non-neg")])
def test_sizes_that_leave_nothing_are_refused(size: int, match: str) -> None:
    with pytest.raises(DataError, match=match):
        val_split(10, size, 0)
