"""Per-sample training signals: running sums checked against a direct computation, the
majority vote against brute force, and the file's round trip and bad-input errors."""

from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rounding import relative_sum_bound

from mwnet.run.signals import EpochPredictions, SampleSignals

F64 = torch.float64


def _logits(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3


def test_predictions_from_logits_match_their_definitions() -> None:
    logits, labels = _logits(50, 5, 0), torch.randint(0, 5, (50,))
    p = EpochPredictions.from_logits(logits, labels)
    for i in range(50):
        row, y = logits[i], int(labels[i])
        others = [c for c in range(5) if c != y]
        best_other = max(others, key=lambda c: float(row[c]))
        assert int(p.pred[i]) == int(row.argmax())
        # float32 softmax of 5 logits and a difference of two of them, each computed by
        # other kernels: a few float32 roundings (2^-24 ≈ 6e-8) of values up to |logit| ≈ 10
        assert float(p.confidence[i]) == pytest.approx(float(row.softmax(0)[y]), rel=1e-5)
        assert float(p.margin[i]) == pytest.approx(float(row[y] - row[best_other]), abs=1e-5)
        assert int(p.runner_up[i]) == best_other
    back = EpochPredictions.unstacked(p.stacked())
    for field in ("pred", "confidence", "margin", "runner_up"):
        torch.testing.assert_close(getattr(back, field), getattr(p, field))


def test_step_sums_count_each_visit() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    s = SampleSignals(labels, 3)
    s.record_step(
        torch.tensor([0, 1, 1]), torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 0.1, 0.3])
    )
    s.record_step(torch.tensor([0, 3]), torch.tensor([3.0, 5.0]))
    np.testing.assert_allclose(s.mean("loss"), [2.0, 3.0, np.nan, 5.0])
    # float32 weights 0.5 and (0.1 + 0.3) / 2: a few float32 roundings (2^-24 ≈ 6e-8 each)
    np.testing.assert_allclose(s.mean("weight"), [0.5, 0.2, np.nan, np.nan], rtol=1e-6)
    assert s.last_loss.tolist()[0] == 3.0 and s.last_loss.tolist()[3] == 5.0
    assert s.has_weights


def test_epoch_counters_match_a_direct_count() -> None:
    n, k, epochs = 40, 4, 7
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    s = SampleSignals(labels, k)
    all_logits = [_logits(n, k, 10 + e) for e in range(epochs)]
    for logits in all_logits:
        s.record_epoch(EpochPredictions.from_logits(logits, labels))
    stacked = torch.stack(all_logits)  # (E, n, k)
    agree = (stacked.argmax(2) == labels).double().mean(0)
    confidence = stacked.softmax(2).gather(2, labels[None, :, None].expand(epochs, n, 1))[..., 0]
    # an exact count of 0/1 divided by E in float64 on both sides (a float32 mean was up to
    # 2^-24 away, within the default 1e-7 by less than 2x): one or two roundings apart
    np.testing.assert_allclose(s.mean("agreement"), agree.numpy(), rtol=relative_sum_bound(2, F64))
    # float32 softmax and a sum of E = 7 terms, in another order: each within a few float32
    # roundings (2^-24 ≈ 6e-8 each) of the exact mean, 1e-5 is over 10 times that
    np.testing.assert_allclose(s.mean("confidence"), confidence.mean(0).numpy(), rtol=1e-5)
    assert s.epochs == epochs
    assert torch.equal(s.last_pred, all_logits[-1].argmax(1))


@settings(deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=6))
def test_likely_label_is_the_majority_runner_up_when_one_exists(votes_per_sample) -> None:
    """Boyer-Moore against brute force: whenever one class won more than half of the
    epochs as the preferred other class, it is the likely label."""
    epochs = max(len(v) for v in votes_per_sample)
    votes = [v + [v[-1]] * (epochs - len(v)) for v in votes_per_sample]  # pad to E epochs
    n = len(votes)
    labels = torch.full((n,), 4)  # the given label never competes with its runner-up
    s = SampleSignals(labels, 5)
    for e in range(epochs):
        runner_up = torch.tensor([v[e] for v in votes])
        logits = torch.zeros(n, 5)
        logits[torch.arange(n), runner_up] = 2.0
        logits[:, 4] = 1.0
        s.record_epoch(EpochPredictions.from_logits(logits, labels))
    for i, v in enumerate(votes):
        winner, count = Counter(v).most_common(1)[0]
        if count * 2 > len(v):
            assert int(s.likely[i]) == winner


def test_state_round_trip_and_file(tmp_path) -> None:
    labels = torch.tensor([0, 1, 1, 2, 0])
    s = SampleSignals(labels, 3)
    s.record_step(torch.arange(5), torch.rand(5), torch.rand(5))
    s.record_epoch(EpochPredictions.from_logits(_logits(5, 3, 2), labels))
    again = SampleSignals(labels, 3)
    again.load_state_dict(s.state_dict())
    for key, value in s.state_dict().items():
        other = again.state_dict()[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    s.save(tmp_path / "signals.npz", {"index": np.arange(10, 15)})
    loaded, extra = SampleSignals.load(tmp_path / "signals.npz")
    torch.testing.assert_close(loaded.loss_sum, s.loss_sum, rtol=0, atol=0)
    assert loaded.epochs == 1 and extra["index"].tolist() == [10, 11, 12, 13, 14]


def test_state_of_other_labels_is_refused() -> None:
    s = SampleSignals(torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="other labels"):
        SampleSignals(torch.tensor([0, 1, 1]), 3).load_state_dict(s.state_dict())


def test_bad_signal_files_give_one_line_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"signals\.npz after each epoch"):
        SampleSignals.load(tmp_path / "missing.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="damaged"):
        SampleSignals.load(damaged)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    with pytest.raises(ValueError, match="not an mwnet signals file"):
        SampleSignals.load(foreign)
    s = SampleSignals(torch.tensor([0, 1]), 2)
    s.save(tmp_path / "ok.npz")
    truncated = tmp_path / "truncated.npz"
    with zipfile.ZipFile(tmp_path / "ok.npz") as src, zipfile.ZipFile(truncated, "w") as dst:
        for item in src.infolist():
            if not item.filename.startswith("loss_sum"):
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match="damaged"):
        SampleSignals.load(truncated)


def test_unknown_signal_name() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        SampleSignals(torch.tensor([0]), 1).mean("entropy")
