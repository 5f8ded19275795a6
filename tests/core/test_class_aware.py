"""CMW-Net's class-aware weighting net, and the reweighter calling nets with labels."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import BnCnn, Mlp, random_batches, reference_class_aware_weights, reference_iteration
from numeric import central_differences
from rounding import central_difference_error, gamma

import mwnet
from mwnet import ClassAwareWeightNet, WeightNet, cluster_by_count

# BnCnn has 5 classes: three sizes of class, so three clusters with one head each.
COUNTS = [500, 480, 60, 55, 5]
CLUSTERS = [0, 0, 1, 1, 2]

# The finite-difference step: balances the truncation h²·|f⁽³⁾|/6 against the rounding
# γ_1000·|f|/h (rounding.central_difference_error), about 3e-9 each.
H = 1e-4


def _sse(values: np.ndarray, labels: np.ndarray) -> float:
    return float(
        sum(
            ((values[labels == k] - values[labels == k].mean()) ** 2).sum()
            for k in np.unique(labels)
        )
    )


def _brute_force_sse(values: np.ndarray, k: int) -> float:
    """The least within-cluster sum of squares over every split of the sorted distinct
    values into k contiguous groups (optimal 1-D clusters are contiguous)."""
    distinct = np.unique(values)
    k = min(k, len(distinct))
    best = np.inf
    for cuts in itertools.combinations(range(1, len(distinct)), k - 1):
        group_of_distinct = np.searchsorted(np.array(cuts), np.arange(len(distinct)), "right")
        labels = group_of_distinct[np.searchsorted(distinct, values)]
        best = min(best, _sse(values, labels))
    return best


def test_clusters_are_sorted_largest_first():
    assert cluster_by_count(COUNTS, 3).tolist() == CLUSTERS
    assert cluster_by_count(torch.tensor(COUNTS[::-1]), 3).tolist() == CLUSTERS[::-1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 60), min_size=1, max_size=9),
    st.integers(1, 4),
)
def test_clustering_is_the_optimal_k_means(counts, k):
    labels = cluster_by_count(counts, k).numpy()
    values = np.array(counts, dtype=np.float64)
    assert _sse(values, labels) <= _brute_force_sse(values, k) + 1e-9
    # equal counts share a cluster, and a larger count never sits in a later cluster
    order = np.argsort(values, kind="stable")
    assert (np.diff(labels[order]) <= 0).all()
    assert labels.max() + 1 == min(k, len(set(counts)))


@pytest.mark.parametrize(
    ("counts", "k", "want"),
    [([120] * 10, 3, [0] * 10), ([1, 2, 3], 5, [2, 1, 0]), ([7], 3, [0])],
)
def test_fewer_distinct_counts_than_clusters(counts, k, want):
    """Balanced data (one distinct count) gives one cluster: CMW-Net is then MW-Net."""
    assert cluster_by_count(counts, k).tolist() == want
    assert ClassAwareWeightNet(counts, k).num_clusters == max(want) + 1


@pytest.mark.parametrize(
    ("counts", "k", "message"),
    [
        ([], 3, "non-empty 1-D"),
        ([[1, 2]], 3, "non-empty 1-D"),
        ([3, -1], 2, "non-negative"),
        ([3, 4], 0, "clusters must be an integer >= 1"),
    ],
)
def test_bad_counts(counts, k, message):
    with pytest.raises(ValueError, match=message):
        cluster_by_count(counts, k)


def test_one_cluster_is_weight_net_to_the_bit():
    torch.manual_seed(3)
    aware = ClassAwareWeightNet([40] * 6, clusters=3).double()
    torch.manual_seed(3)
    plain = WeightNet().double()
    for a, b in zip(aware.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a.reshape(b.shape), b), "same seed, same initial parameters"
    losses, labels = torch.rand(33, dtype=torch.float64) * 6, torch.randint(0, 6, (33,))
    assert torch.equal(aware(losses, labels), plain(losses))
    assert torch.equal(aware(losses[:, None], labels), plain(losses[:, None]))


def test_gathered_heads_equal_a_per_sample_loop():
    torch.manual_seed(0)
    net = ClassAwareWeightNet(COUNTS, hidden=7).double()
    with torch.no_grad():
        net.heads.weight.normal_()  # heads that differ a lot, so a wrong head shows
    losses, labels = torch.rand(40, dtype=torch.float64) * 4, torch.randint(0, 5, (40,))
    want = reference_class_aware_weights(list(net.parameters()), losses, labels, CLUSTERS)
    # Each side computes z = Σ_j a_j·relu(w_j·L + b_j) + b in at most hidden + 3 roundings
    # of terms no larger than S = Σ_j |a_j|(|w_j·L| + |b_j|) + |b|, so within γ_{h+3}·S of
    # the exact z; sigmoid's slope is s(1 − s), and its exp, sum and quotient add 3 more
    # roundings of s. Measured 1.9e-16 relative; a wrong head is off by 1e-1.
    w1, b1, heads_w, heads_b = (p.detach() for p in net.parameters())
    k = torch.tensor(CLUSTERS)[labels]
    terms = heads_w[k].abs() * ((w1[:, 0] * losses[:, None]).abs() + b1.abs())
    scale = terms.sum(1) + heads_b[k].abs()
    dz = gamma(w1.shape[0] + 3, torch.float64) * scale  # each side's distance from exact z
    bound = 2 * (want * (1 - want) * dz + want * gamma(3, torch.float64))
    assert bool(((net(losses, labels).detach() - want).abs() <= bound).all())
    curves = net.curves(losses)
    assert curves.shape == (40, 3)
    assert (curves[:, 0] - curves[:, 2]).abs().max() > 0.1


def test_bad_inputs():
    net = ClassAwareWeightNet(COUNTS)
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, 1\), got \(4, 2\)"):
        net(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one integer label per loss, shape \(4,\)"):
        net(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden width must be >= 1"):
        ClassAwareWeightNet(COUNTS, hidden=0)


def test_the_reweighter_passes_labels_and_asks_for_them():
    model = Mlp()
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), ClassAwareWeightNet([5, 5, 1, 1])
    )
    with pytest.raises(ValueError, match="takes each sample's label; pass labels="):
        rw.weights(torch.rand(3))
    assert rw.weights(torch.rand(3), torch.tensor([0, 2, 3])).shape == (3,)


# --- the hypergradient stays exact ------------------------------------------------------


def _class_aware_net(seed: int = 1, hidden: int = 10) -> ClassAwareWeightNet:
    torch.manual_seed(seed)
    net = ClassAwareWeightNet(COUNTS, hidden=hidden).double()
    with torch.no_grad():
        net.heads.weight.mul_(3)  # distinct heads: a mixed-up cluster changes the answer
    return net


@pytest.mark.parametrize("hypergrad", ["reverse", "fast"])
@pytest.mark.parametrize("virtual_step", ["sgd", "optimizer"])
def test_steps_match_independent_reference(hypergrad, virtual_step):
    """Three iterations against the hand-written authors' algorithm with a per-sample
    head loop (see nets.reference_iteration): model, buffers and weighting net agree."""
    torch.manual_seed(0)
    model, vnet = BnCnn().double(), _class_aware_net()
    cfg = {"lr": 0.2, "momentum": 0.9, "nesterov": True, "wd": 5e-4, "vlr": 0.5}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    theta = [p.detach().clone() for p in vnet.parameters()]
    opt = torch.optim.SGD(
        model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=cfg["vlr"]),
        hypergrad=hypergrad,
        virtual_step=virtual_step,
    )

    def weigh(th, losses, labels):
        return reference_class_aware_weights(th, losses, labels, CLUSTERS)

    momentum: dict = {}
    for i in range(3):
        batch = random_batches((3, 8, 8), 5, torch.float64, seed=i, n=20)
        rw.step(*batch)
        params, theta = reference_iteration(
            params, buffers, momentum, theta, batch, cfg, "sum", virtual_step, weigh
        )
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), params[k], rtol=1e-9, atol=1e-12, msg=k)
    for got, want in zip(vnet.parameters(), theta, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-9, atol=1e-12)
    start = _class_aware_net()
    moved = [
        (a - b).abs().max() for a, b in zip(vnet.parameters(), start.parameters(), strict=True)
    ]
    assert min(moved) > 1e-6, "every part of the weighting net, each head included, moved"


@pytest.mark.parametrize("normalize", ["sum", "mean"])
def test_reverse_matches_central_finite_differences(normalize):
    torch.manual_seed(0)
    model, vnet = Mlp(classes=5).double(), _class_aware_net(hidden=4)
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        vnet,
        hypergrad="reverse",
        normalize=normalize,
    )
    batch = random_batches((6,), 5, torch.float64, n=16)
    analytic = torch.cat([g.reshape(-1) for g in rw.meta_gradient(*batch)[0]])
    numeric = central_differences(list(vnet.parameters()), lambda: rw.meta_gradient(*batch)[1], H)
    assert numeric.norm() > 0
    # central differences with h = H miss each entry by at most
    # h²·|f⁽³⁾|/6 + γ_1000·|f|/h (rounding.central_difference_error; |f⁽³⁾| ≲ 1 for these
    # order-1 losses): 3e-9 + 1e-9·|f| an entry; a wrong hypergradient is off by 1e-3·|g|
    per_entry = central_difference_error(
        H, abs(float(rw.meta_gradient(*batch)[1])), 1.0, torch.float64
    )
    distance = float((analytic - numeric).norm())
    assert distance <= per_entry * numeric.numel() ** 0.5, (distance, float(numeric.norm()))


def _run(hypergrad="fast", steps=3, **kw) -> dict:
    torch.manual_seed(0)
    model, vnet = BnCnn(dropout=0.3).double(), _class_aware_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    rw = mwnet.MetaReweighter(
        model,
        opt,
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=0.5),
        hypergrad=hypergrad,
        **kw,
    )
    torch.manual_seed(7)
    for i in range(steps):
        rw.step(*random_batches((3, 8, 8), 5, torch.float64, seed=i, n=20))
    return {**model.state_dict(), **{f"v.{k}": v for k, v in vnet.state_dict().items()}}


def _assert_close_runs(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)


def test_fast_equals_reverse_with_dropout_and_momentum():
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.3e-16 of each other; 1e-12 is over
    # 4000 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(
        _run("fast", virtual_step="optimizer"),
        _run("reverse", virtual_step="optimizer"),
        rtol=1e-9,
        atol=1e-12,
    )


def test_low_memory_equals_the_default_path():
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.3e-16 of each other; 1e-12 is over
    # 4000 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(_run(low_memory=True), _run(), rtol=0, atol=1e-12)


def test_meta_interval_updates_the_net_every_kth_step():
    every, second = _run(steps=2), _run(steps=2, meta_interval=2)
    assert torch.equal(second["v.heads.weight"], _run(steps=1)["v.heads.weight"])
    assert not torch.equal(every["v.heads.weight"], second["v.heads.weight"])


def test_head_mode_trains_each_cluster_head():
    start = _class_aware_net()
    got = _run("head")
    assert (got["v.heads.weight"] - start.heads.weight).abs().amax(1).min() > 1e-6


def test_compiled_step_equals_the_eager_step():
    # Dropout draws depend on the sample order, so no reordered run can measure the noise.
    # Measured (1 and 2 threads): the runs stay within 2.3e-16 of each other; 1e-11 is over
    # 40000 times that, while a missing or wrong term moves them by 1e-3 and more.
    _assert_close_runs(_run(compile=True), _run(), rtol=1e-9, atol=1e-11)


# --- a frozen weighting net -------------------------------------------------------------


def test_frozen_net_is_a_weighted_plain_step_and_needs_no_meta_batch():
    torch.manual_seed(0)
    model, vnet = Mlp(classes=5).double(), _class_aware_net()
    reference = copy.deepcopy(model)
    before = {k: v.clone() for k, v in vnet.state_dict().items()}
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.3), vnet, frozen=True)
    opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    for i in range(3):
        x, y, _, _ = random_batches((6,), 5, torch.float64, seed=i, n=20)
        assert not rw.is_meta_step()
        rw.step(x, y)
        losses = torch.nn.functional.cross_entropy(reference(x), y, reduction="none")
        with torch.no_grad():
            w = reference_class_aware_weights(list(vnet.parameters()), losses, y, CLUSTERS)
        opt.zero_grad()
        ((w / w.sum()) * losses).sum().backward()
        opt.step()
    # three steps of one plain update whose sums run in another order: measured within
    # 6e-17 (an ulp of the 0.5 scale); 1e-14 + 1e-12·|value| is over 100 times that
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-12, atol=1e-14)
    for k, v in vnet.state_dict().items():
        assert torch.equal(v, before[k]), f"the frozen net's {k} moved"


def test_a_meta_step_without_a_meta_batch_is_a_clear_error():
    model = Mlp(classes=5).double()
    rw = mwnet.MetaReweighter(
        model, torch.optim.SGD(model.parameters(), lr=0.1), WeightNet().double()
    )
    x, y, _, _ = random_batches((6,), 5, torch.float64)
    with pytest.raises(ValueError, match="step 0 updates the weighting net and needs a meta"):
        rw.step(x, y)


def test_frozen_refuses_an_optimizer():
    model, net = Mlp(), WeightNet()
    with pytest.raises(ValueError, match="frozen=True never updates weight_net"):
        mwnet.MetaReweighter(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            net,
            torch.optim.SGD(net.parameters(), lr=0.1),
            frozen=True,
        )
