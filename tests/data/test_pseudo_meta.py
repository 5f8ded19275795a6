"""The pseudo-meta selection (lowest score per observed class) and its precision."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mwnet.data import DataError, PseudoMeta, pseudo_meta_precision, select_pseudo_meta

FAST = settings(max_examples=60, deadline=None)


def reference(scores, labels, per_class: int, num_classes: int) -> list[int]:
    """Brute force: sort each class's members by (score, index) and take the first few."""
    chosen: list[int] = []
    for c in range(num_classes):
        members = [i for i, y in enumerate(labels) if y == c]
        members.sort(key=lambda i: (float(scores[i]), i))
        chosen.extend(members[:per_class])
    return sorted(chosen)


@st.composite
def problems(draw):
    """Small problems with many ties (scores from a few values) and uneven classes."""
    k = draw(st.integers(1, 6))
    n = draw(st.integers(0, 60))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    values = st.sampled_from([0.0, 0.5, 1.0, 2.0, float("inf")]) | st.floats(0, 10)
    scores = draw(st.lists(values, min_size=n, max_size=n))
    per_class = draw(st.integers(1, 8))
    return (
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.int64),
        per_class,
        k,
    )


@FAST
@given(problems())
def test_matches_brute_force_reference(problem):
    scores, labels, per_class, k = problem
    got = select_pseudo_meta(scores, labels, per_class, k)
    assert got.indices.tolist() == reference(scores.tolist(), labels.tolist(), per_class, k)
    assert got.indices.dtype == torch.int64


@FAST
@given(problems())
def test_chosen_score_at_most_unchosen_in_each_class(problem):
    scores, labels, per_class, k = problem
    got = select_pseudo_meta(scores, labels, per_class, k)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    chosen[got.indices] = True
    for c in range(k):
        in_c = labels == c
        picked, rest = scores[in_c & chosen], scores[in_c & ~chosen]
        if picked.numel() and rest.numel():
            assert picked.max() <= rest.min()
            # at the boundary score, the lower indices win
            edge = picked.max()
            tied_in = torch.nonzero(in_c & chosen & (scores == edge)).flatten()
            tied_out = torch.nonzero(in_c & ~chosen & (scores == edge)).flatten()
            if tied_in.numel() and tied_out.numel():
                assert tied_in.max() < tied_out.min()


@FAST
@given(problems())
def test_counts_are_min_of_per_class_and_class_size(problem):
    scores, labels, per_class, k = problem
    got = select_pseudo_meta(scores, labels, per_class, k)
    sizes = torch.bincount(labels, minlength=k)
    assert torch.equal(got.class_sizes, sizes)
    assert torch.equal(got.counts, torch.clamp(sizes, max=per_class))
    assert torch.equal(torch.bincount(labels[got.indices], minlength=k), got.counts)
    assert got.indices.numel() == int(got.counts.sum())
    # sorted and unique
    assert torch.equal(got.indices, torch.unique(got.indices))
    assert got.short_classes == tuple(c for c in range(k) if 0 < sizes[c] < per_class)
    assert got.empty_classes == tuple(c for c in range(k) if sizes[c] == 0)
    assert got.complete == (not got.short_classes and not got.empty_classes)


@FAST
@given(problems())
def test_invariant_to_increasing_transform_and_input_type(problem):
    scores, labels, per_class, k = problem
    got = select_pseudo_meta(scores, labels, per_class, k).indices
    as_numpy = select_pseudo_meta(scores.numpy(), labels.numpy(), per_class, k).indices
    # exact in float64, so strictly increasing: the order, and so the choice, is kept
    double = select_pseudo_meta(scores.double() * 4, labels, per_class, k).indices
    assert torch.equal(got, as_numpy) and torch.equal(got, double)


def test_lowest_scores_win_per_class():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.05])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    got = select_pseudo_meta(scores, labels, 2, 2)
    assert got.indices.tolist() == [1, 3, 4, 6]
    assert got.counts.tolist() == [2, 2]
    assert got.complete


def test_ties_go_to_the_smaller_index_every_time():
    # 200 samples of one class, all the same score: the first 10 indices, every call,
    # whatever order the samples arrive in.
    n = 200
    labels = torch.zeros(n, dtype=torch.int64)
    scores = torch.ones(n)
    for _ in range(5):
        assert select_pseudo_meta(scores, labels, 10, 1).indices.tolist() == list(range(10))
    # a tie at the boundary: index 3 and 7 share the cut-off score, 3 wins
    scores = torch.tensor([5.0, 0.0, 9.0, 1.0, 9.0, 0.0, 9.0, 1.0])
    labels = torch.zeros(8, dtype=torch.int64)
    assert select_pseudo_meta(scores, labels, 3, 1).indices.tolist() == [1, 3, 5]


def test_ties_deterministic_on_large_tied_input():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 50, (20_000,), generator=g)
    scores = torch.randint(0, 3, (20_000,), generator=g).float()  # massive ties
    first = select_pseudo_meta(scores, labels, 10, 50).indices
    for _ in range(3):
        assert torch.equal(select_pseudo_meta(scores, labels, 10, 50).indices, first)
    ref = reference(scores.tolist(), labels.tolist(), 10, 50)
    assert first.tolist() == ref


def test_small_and_empty_classes_are_recorded():
    scores = torch.tensor([0.3, 0.1, 0.2, 0.4, 0.9])
    labels = torch.tensor([0, 0, 0, 2, 0])
    got = select_pseudo_meta(scores, labels, 3, 4)
    assert isinstance(got, PseudoMeta)
    assert got.indices.tolist() == [0, 1, 2, 3]
    assert got.counts.tolist() == [3, 0, 1, 0]
    assert got.class_sizes.tolist() == [4, 0, 1, 0]
    assert got.short_classes == (2,)
    assert got.empty_classes == (1, 3)
    assert not got.complete
    line = got.describe()
    assert "\n" not in line
    assert "4 samples, 3 per class over 4 classes" in line
    assert "all taken: class 2 (1)" in line
    assert "no samples: class 1, 3" in line


def test_no_samples_at_all():
    got = select_pseudo_meta(torch.zeros(0), torch.zeros(0, dtype=torch.int64), 10, 3)
    assert got.indices.numel() == 0 and got.indices.dtype == torch.int64
    assert got.empty_classes == (0, 1, 2)


def test_infinite_scores_are_ordered_last():
    scores = torch.tensor([float("inf"), 1.0, float("inf"), 2.0])
    labels = torch.zeros(4, dtype=torch.int64)
    assert select_pseudo_meta(scores, labels, 3, 1).indices.tolist() == [0, 1, 3]


def test_scales_to_a_million_samples():
    g = torch.Generator().manual_seed(0)
    n, k = 1_000_000, 1_000
    scores = torch.rand(n, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    # Timed against one stable sort of the scores, interleaved in this process, so that
    # a loaded machine slows both alike: the selection is a few sorts' work, not a loop.
    best, sort = float("inf"), float("inf")
    for _ in range(3):
        start = time.perf_counter()
        got = select_pseudo_meta(scores, labels, 10, k)
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        torch.sort(scores, stable=True)
        sort = min(sort, time.perf_counter() - start)
    assert best < 8 * sort, f"selection took {best / sort:.1f}x one sort"
    assert got.indices.numel() == 10 * k and got.complete
    # spot-check a few classes against a direct per-class sort
    for c in (0, 417, 999):
        members = torch.nonzero(labels == c).flatten()
        want = members[torch.argsort(scores[members], stable=True)[:10]].sort().values
        assert torch.equal(got.indices[labels[got.indices] == c], want)


def test_precision():
    observed = torch.tensor([0, 1, 1, 2, 0])
    true = torch.tensor([0, 1, 2, 2, 1])
    assert pseudo_meta_precision(torch.tensor([0, 1, 2, 3]), observed, true) == 0.75
    assert pseudo_meta_precision([2, 4], observed.numpy(), true.numpy()) == 0.0
    assert pseudo_meta_precision(torch.tensor([0, 1, 2, 3]), observed, None) is None
    assert pseudo_meta_precision(torch.zeros(0, dtype=torch.int64), observed, true) is None


def test_precision_of_a_selection():
    # the clean samples score low, so the selection is clean
    true = torch.tensor([0, 0, 0, 1, 1, 1])
    observed = torch.tensor([0, 0, 1, 1, 1, 0])
    scores = torch.tensor([0.1, 0.2, 3.0, 0.1, 0.3, 2.5])
    got = select_pseudo_meta(scores, observed, 2, 2)
    assert pseudo_meta_precision(got.indices, observed, true) == 1.0
    got = select_pseudo_meta(scores, observed, 3, 2)
    assert pseudo_meta_precision(got.indices, observed, true) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("scores", "labels", "per_class", "k", "match"),
    [
        (torch.zeros(3), torch.zeros(4, dtype=torch.int64), 1, 2, "3 scores and 4 labels"),
        (torch.zeros(2, 2), torch.zeros(4, dtype=torch.int64), 1, 2, "scores must be 1-d"),
        (torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 1, 2, "floating"),
        (np.zeros(3, dtype=np.int32), np.zeros(3, dtype=np.int64), 1, 2, "floating"),
        (torch.zeros(3), torch.zeros(3), 1, 2, "labels must be integers"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), 1, 2, r"labels out of range.*\[0, 2\)"),
        (torch.zeros(3), torch.tensor([0, -1, 1]), 1, 2, "labels out of range"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0, 2, "per_class must be a positive"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 2.0, 2, "per_class must be"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.int64), True, 2, "per_class must be"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 1, 0, "num_classes must be"),
    ],
)
def test_bad_input(scores, labels, per_class, k, match):
    with pytest.raises(DataError, match=match) as info:
        select_pseudo_meta(scores, labels, per_class, k)
    assert "\n" not in str(info.value)


def test_nan_scores_are_counted():
    scores = torch.tensor([0.1, float("nan"), 0.2, float("nan"), float("nan")])
    labels = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(DataError, match=r"3 NaN value\(s\) \(first at index 1\)") as info:
        select_pseudo_meta(scores, labels, 1, 1)
    assert "fix the scorer" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_precision_bad_input():
    observed, true = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1])
    with pytest.raises(DataError, match="same samples, got 3 and 2"):
        pseudo_meta_precision([0], observed, true[:2])
    with pytest.raises(DataError, match=r"indices out of range.*\[0, 3\)"):
        pseudo_meta_precision([0, 3], observed, true)
    with pytest.raises(DataError, match="1-d integer"):
        pseudo_meta_precision(torch.tensor([0.0, 1.0]), observed, true)
