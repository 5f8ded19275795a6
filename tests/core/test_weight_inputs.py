"""What a weighting net reads about each sample: hand-computed inputs, the per-sample
averages and loss sequences against loops written out here, the nets' widths, and the
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nets import Mlp, random_batches
from rounding import relative_sum_bound

import mwnet
from mwnet.core import weight_inputs
from mwnet.core.weight_inputs import (
    WEIGHT_INPUTS,
    WeightInputs,
    check_inputs,
    rank_within_class,
)
from mwnet.core.weight_net_spec import build_weight_net, weight_net_spec

ALL = WEIGHT_INPUTS


def test_margin_confidence_and_agreement_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    losses = F.cross_entropy(logits, labels, reduction="none")
    inputs = WeightInputs(["margin", "confidence", "agreement"], num_samples=3, dtype=torch.float64)
    got, _ = inputs.batch(logits, losses, labels, torch.tensor([0, 1, 2]))
    # margins: z_y - max other: 2 - 1, 1 - 3, 1 - 1 (a tie is no agreement)
    assert got[:, 0].tolist() == [1.0, -2.0, 0.0]
    e = math.exp
    confidence = [e(2) / (e(2) + 1 + e(1)), e(1) / (1 + e(3) + e(1)), e(1) / (e(1) + e(1) + 1)]
    # softmax subtracts the largest logit first: both sides are chains of at most 8
    # correctly rounded operations (3 exp, 2 additions, a division, and the shift)
    bound = relative_sum_bound(8, torch.float64)
    torch.testing.assert_close(
        got[:, 1], torch.tensor(confidence, dtype=torch.float64), rtol=bound, atol=0
    )
    assert got[:, 2].tolist() == [1.0, 0.0, 0.0]


def test_loss_rank_by_hand():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.3, 0.7, 2.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    # class 0: 0.1 < 0.5 < 0.9 -> ranks 0.5, 0, 1; class 1: the tie 0.3 = 0.3 shares
    # (0 + 1/2) / 2 = 0.25, and 0.7 is above both: 1; class 2 alone: 1/2
    want = [0.5, 0.0, 1.0, 0.25, 0.25, 1.0, 0.5]
    assert rank_within_class(losses, labels).tolist() == want


def _reference_rows(visits, decay):
    """The averages written as a loop over visits: first value, then d·row + (1 − d)·v."""
    table = {}
    for index, values in visits:
        for i, v in zip(index.tolist(), values, strict=True):
            old = table.get(i)
            if old is not None:
                v = [decay * a + (1 - decay) * b for a, b in zip(old, v, strict=True)]
            table[i] = v
    return table


def test_averages_follow_each_sample_over_its_visits():
    decay = 0.7
    inputs = WeightInputs(["loss_ema", "margin"], num_samples=6, decay=decay, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    visits = []
    for index in ([0, 1, 2, 3], [2, 4, 0, 5], [5, 2, 1, 0]):
        index = torch.tensor(index)
        logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (4,), generator=g)
        losses = F.cross_entropy(logits, labels, reduction="none")
        margin = logits[torch.arange(4), labels] - logits.scatter(
            1, labels[:, None], -torch.inf
        ).amax(1)
        visits.append((index, torch.stack([losses, margin], 1).tolist()))
        got, pending = inputs.batch(logits, losses, labels, index)
        want = _reference_rows(visits, decay)
        # the features are this visit's averages (the visit counts) ... (the same float64
        # operations in the same order on both sides: equal to the bit)
        assert torch.equal(
            got, torch.tensor([want[i] for i in index.tolist()], dtype=torch.float64)
        )
        inputs.commit(pending)
    # ... and the table holds every sample's latest; sample 3 seen once, its row its value
    assert inputs.seen.tolist() == [True] * 6
    assert torch.equal(inputs.table, torch.tensor([want[i] for i in range(6)], dtype=torch.float64))


def _sequences(visits: list[tuple[list[int], list[float]]], k: int) -> list[list[list[float]]]:
    """The loss sequence each visit feeds, written as a loop over visits: the sample's
    losses so far, its first one repeated in front until there are k, the last k kept."""
    seen: dict[int, list[float]] = {}
    fed = []
    for index, losses in visits:
        batch = []
        for i, loss in zip(index, losses, strict=True):
            seen[i] = [*seen.get(i, []), loss]
            padded = [seen[i][0]] * k + seen[i]
            batch.append(padded[-k:])
        fed.append(batch)
    return fed


def test_the_loss_sequence_by_hand():
    """Sample 0's losses 1, 2, 3, 4 over four visits, K = 3: it reads [1, 1, 1],
    [1, 1, 2], [1, 2, 3], [2, 3, 4]; sample 1 (seen at the first and last visits only)
    [5, 5, 5] then [5, 5, 6]; sample 2 (seen at the last visit only) [7, 7, 7]."""
    visits = [([0, 1], [1.0, 5.0]), ([0], [2.0]), ([0], [3.0]), ([0, 1, 2], [4.0, 6.0, 7.0])]
    want = [
        [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]],
        [[1.0, 1.0, 2.0]],
        [[1.0, 2.0, 3.0]],
        [[2.0, 3.0, 4.0], [5.0, 5.0, 6.0], [7.0, 7.0, 7.0]],
    ]
    assert _sequences(visits, 3) == want  # the loop written here agrees with the hand
    inputs = WeightInputs(["loss_history"], num_samples=4, history=3, dtype=torch.float64)
    for (index, losses), rows in zip(visits, want, strict=True):
        n = len(index)
        got, pending = inputs.batch(
            None,
            torch.tensor(losses, dtype=torch.float64),
            torch.zeros(n).long(),
            torch.tensor(index),
        )
        assert got.tolist() == rows  # copies of the losses: equal to the bit
        inputs.commit(pending)
    assert inputs.table[:3].tolist() == [[2.0, 3.0, 4.0], [5.0, 5.0, 6.0], [7.0, 7.0, 7.0]]
    assert inputs.seen.tolist() == [True, True, True, False]


def test_a_sequence_one_visit_behind_is_caught(monkeypatch):
    """A plausible bug, the sequence of the earlier visits without this one (one epoch
    behind), feeds other numbers than the reference from the second visit on."""
    monkeypatch.setattr(
        weight_inputs,
        "push_loss",
        lambda old, loss, seen: torch.where(
            seen[:, None], old, loss[:, None].expand(-1, old.shape[1])
        ),
    )
    inputs = WeightInputs(["loss_history"], num_samples=1, history=3, dtype=torch.float64)
    fed = []
    for loss in (1.0, 2.0):
        got, pending = inputs.batch(
            None,
            torch.tensor([loss], dtype=torch.float64),
            torch.tensor([0]),
            torch.tensor([0]),
        )
        fed.append(got.tolist())
        inputs.commit(pending)
    assert fed != _sequences([([0], [1.0]), ([0], [2.0])], 3)


def test_the_sequence_and_the_averages_share_the_table_and_keep_their_values():
    """Adding loss_history leaves the averages' columns what they were, to the bit, and
    the sequence takes the last K columns of the table; loss_history of one visit is the
    loss column itself."""
    g = torch.Generator().manual_seed(0)
    both = WeightInputs(
        ["loss", "loss_history", "margin", "loss_ema"],
        num_samples=6,
        history=1,
        dtype=torch.float64,
    )
    alone = WeightInputs(["margin", "loss_ema"], num_samples=6, dtype=torch.float64)
    for index in ([0, 1, 2, 3], [2, 4, 0, 5], [5, 2, 1, 0]):
        index = torch.tensor(index)
        logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (4,), generator=g)
        losses = F.cross_entropy(logits, labels, reduction="none")
        got, pending = both.batch(logits, losses, labels, index)
        want, pending_alone = alone.batch(logits, losses, labels, index)
        assert torch.equal(got[:, 1], got[:, 0])  # K = 1: the loss
        assert torch.equal(got[:, 2:], want)
        both.commit(pending)
        alone.commit(pending_alone)
    assert torch.equal(both.table[:, :2], alone.table)
    assert torch.equal(both.table[index, 2], losses)  # the last visit's losses


def test_a_net_reading_one_visit_of_history_is_mw_nets_net():
    """inputs=[loss_history], history=1: built under the same seed, the same parameters
    and the same weights as the paper's loss-only net, to the bit."""
    losses = torch.tensor([0.1, 0.7, 2.5, 4.0])
    torch.manual_seed(5)
    sequence = mwnet.WeightNet(inputs=["loss_history"], history=1)
    torch.manual_seed(5)
    plain = mwnet.WeightNet()
    fed, _ = WeightInputs(["loss_history"], num_samples=4, history=1).batch(
        None, losses, torch.zeros(4).long(), torch.arange(4)
    )
    assert torch.equal(sequence(fed).squeeze(1), plain(losses))


def test_the_history_travels_with_the_net():
    net = mwnet.WeightNet(inputs=["loss", "loss_history"], history=4)
    assert net.net[0].in_features == 5 and net.history == 4 and net.dynamics_decay is None
    assert "loss_history (4 visits)" in repr(net)
    spec = weight_net_spec(net)
    assert spec["history"] == 4 and spec["transforms"]["loss_history"] == "identity"
    again = build_weight_net(spec)
    assert again.history == 4 and again.net[0].in_features == 5
    aware = mwnet.ClassAwareWeightNet([5, 3, 2], inputs=["loss_history"], history=2)
    assert aware.trunk.in_features == 2 and build_weight_net(weight_net_spec(aware)).history == 2
    assert mwnet.WeightNet().history is None  # no sequence read: no length recorded
    with pytest.raises(ValueError, match="history must be a whole number of visits >= 1"):
        mwnet.WeightNet(inputs=["loss_history"], history=0)
    with pytest.raises(ValueError, match="needs its history"):
        mwnet.WeightNet(inputs=["loss_history"], history=None)


def test_an_uncommitted_batch_writes_nothing():
    inputs = WeightInputs(["loss_ema"], num_samples=3, dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    inputs.batch(torch.zeros(2, 3), losses, torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert not inputs.seen.any() and not inputs.table.any()


def test_columns_follow_the_inputs_order_and_class_is_one_hot():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    losses = torch.tensor([0.25, 0.5], dtype=torch.float64)
    inputs = WeightInputs(
        ["agreement", "class", "loss"], num_classes=3, num_samples=4, dtype=torch.float64
    )
    got, _ = inputs.batch(logits, losses, labels, torch.tensor([3, 1]))
    assert got.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.25], [1.0, 0.0, 0.0, 1.0, 0.5]]


def test_the_loss_alone_is_the_detached_loss_itself():
    """MW-Net's input: ``cost.data`` in the authors' scripts, no copy, no reshape."""
    losses = torch.tensor([0.3, 1.2], requires_grad=True) * 1.0
    got, pending = WeightInputs(["loss"]).batch(None, losses, torch.tensor([0, 1]), None)
    assert pending is None and got.shape == (2,) and not got.requires_grad
    assert got.data_ptr() == losses.data_ptr()


def test_every_input_is_detached():
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    losses = F.cross_entropy(logits, labels, reduction="none")
    inputs = WeightInputs(ALL, num_classes=3, num_samples=4, dtype=torch.float64)
    got, pending = inputs.batch(logits, losses, labels, torch.arange(4))
    assert not got.requires_grad and not pending.rows.requires_grad


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["loss", "entropy"], "unknown input 'entropy'; choose from " + ", ".join(WEIGHT_INPUTS)),
        ([], "inputs is empty"),
        (["loss", "margin", "loss"], "names loss more than once"),
    ],
)
def test_bad_inputs_are_named(inputs, message):
    with pytest.raises(ValueError, match=message):
        check_inputs(inputs)


def test_index_errors():
    inputs = WeightInputs(["loss_ema"], num_samples=4, dtype=torch.float64)
    args = (torch.zeros(2, 3), torch.ones(2, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"pass index= \(each sample's position"):
        inputs.batch(*args, None)
    with pytest.raises(ValueError, match="index 4 at position 1 lies outside the training set"):
        inputs.batch(*args, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="index repeats a sample"):
        inputs.batch(*args, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="pass num_samples"):
        WeightInputs(["margin"])
    with pytest.raises(ValueError, match="the net needs num_classes"):
        WeightInputs(["class"])


def test_two_terms_per_sample_are_refused():
    """Mixup's objective has a term per label of each mixed input: no per-sample input."""
    inputs = WeightInputs(["loss", "loss_rank"])
    with pytest.raises(ValueError, match="has 4 terms for 2 samples"):
        inputs.batch(torch.zeros(2, 3), torch.ones(4), torch.tensor([0, 1]), None)


def test_a_loss_only_net_is_built_as_before():
    """Same parameters from the same seed, same call: ``inputs=[loss]`` is the paper's net."""
    torch.manual_seed(3)
    explicit = mwnet.WeightNet(hidden=7, depth=2, inputs=["loss"])
    torch.manual_seed(3)
    plain = mwnet.WeightNet(hidden=7, depth=2)
    for (name, a), (_, b) in zip(
        explicit.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert explicit.net[0].in_features == 1 and repr(explicit) == repr(plain)
    assert explicit.dynamics_decay is None  # no average read: no decay recorded


def test_widths_follow_the_inputs():
    net = mwnet.WeightNet(inputs=ALL, num_classes=10, dynamics_decay=0.5, history=3)
    assert net.net[0].in_features == 6 + 10 + 3 and net.dynamics_decay == 0.5
    assert net(torch.zeros(3, 19)).shape == (3, 1)
    with pytest.raises(ValueError, match=r"reads 19 columns per sample .*got \(3,\)"):
        net(torch.zeros(3))
    counts = [5, 3, 2]
    aware = mwnet.ClassAwareWeightNet(counts, inputs=["loss", "class"])
    assert aware.trunk.in_features == 4 and aware.dynamics_decay is None
    assert aware(torch.zeros(2, 4), torch.tensor([0, 2])).shape == (2, 1)
    with pytest.raises(ValueError, match="dynamics_decay must lie in"):
        mwnet.WeightNet(inputs=["margin"], dynamics_decay=1.0)


def test_a_loss_only_net_is_fed_as_before():
    """``inputs=[loss]`` (the default): the net is called, in the meta step and in the real
    update, with the detached cross-entropy of the batch as an (n, 1) column, the authors'
    ``vnet(cost_v.data)``, and the reweighter's state holds nothing new."""
    torch.manual_seed(0)
    model, net = Mlp().double(), mwnet.WeightNet(hidden=5, inputs=["loss"]).double()
    seen = []
    net.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), net)
    x, y, xm, ym = random_batches((6,), 4, torch.float64)
    with torch.no_grad():
        want = F.cross_entropy(model(x), y, reduction="none").reshape(-1, 1)
    rw.step(x, y, xm, ym)
    assert len(seen) == 2
    assert all(torch.equal(s, want) and not s.requires_grad for s in seen)
    assert set(rw.state_dict()) == {"steps_done", "weight_net", "weight_optimizer"}
