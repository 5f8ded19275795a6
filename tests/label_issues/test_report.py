"""The label-issue report from recorded signals: the score's formula, flags, noise-rate
estimates, likely labels and the CSV, each against a direct computation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mwnet.label_issues import auroc, find_label_issues, flag_issues, quality_scores
from mwnet.label_issues.score import low_component_posterior
from mwnet.run.signals import EpochPredictions, SampleSignals

K = 3


def _recorded(predicted: list[list[int]], labels: list[int]) -> SampleSignals:
    """Signals of a run whose evaluation passes predicted ``predicted[e][i]`` for sample
    i in epoch e (the logits put 3 on the prediction, 1 on the next class, 0 elsewhere)."""
    labels_t = torch.tensor(labels)
    s = SampleSignals(labels_t, K)
    for epoch in predicted:
        pred = torch.tensor(epoch)
        logits = torch.zeros(len(labels), K)
        logits[torch.arange(len(labels)), (pred + 1) % K] = 1.0
        logits[torch.arange(len(labels)), pred] = 3.0
        s.record_epoch(EpochPredictions.from_logits(logits, labels_t))
        s.record_step(torch.arange(len(labels)), torch.full((len(labels),), 0.5))
    return s


def test_agreement_score_is_votes_plus_mean_confidence_over_passes_plus_one() -> None:
    labels = [0, 0, 1, 2]
    predicted = [[0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 2, 0]]
    s = _recorded(predicted, labels)
    scores = quality_scores(s)
    assert scores.signal == "agreement" and scores.passes == 3
    agree = np.array([3, 1, 1, 0], dtype=float)
    e3, e1 = np.exp(3.0), np.exp(1.0)
    p_hit = e3 / (e3 + e1 + 1)  # confidence when the given label is predicted
    p_next = e1 / (e3 + e1 + 1)  # ... when it is the class after the prediction
    p_other = 1 / (e3 + e1 + 1)
    # sample 1 (label 0): predicted 1, 1, 0 -> label 0 is "other" twice ((1+1)%3=2), hit once
    # sample 2 (label 1): predicted 1, 2, 2 -> hit, other ((2+1)%3=0), other
    # sample 3 (label 2): predicted 0 three times -> other ((0+1)%3=1) every pass
    confidence = np.array(
        [p_hit, (2 * p_other + p_hit) / 3, (p_hit + 2 * p_other) / 3, p_other],
    )
    np.testing.assert_allclose(scores.values, (agree + confidence) / 4, rtol=1e-5)
    assert p_next > 0  # (the next class never is the given label in this data)


def test_without_evaluation_passes_the_score_is_exp_minus_mean_loss() -> None:
    s = SampleSignals(torch.tensor([0, 1, 2]), K)
    s.record_step(torch.tensor([0, 1, 2, 0]), torch.tensor([1.0, 0.2, 3.0, 2.0]))
    scores = quality_scores(s)
    assert scores.signal == "loss" and scores.passes == 0
    np.testing.assert_allclose(scores.values, np.exp(-np.array([1.5, 0.2, 3.0])), rtol=1e-6)
    with pytest.raises(ValueError, match="eval_train=false"):
        quality_scores(s, "agreement")
    with pytest.raises(ValueError, match="recorded no weights"):
        quality_scores(s, "weight")
    with pytest.raises(ValueError, match="unknown signal"):
        quality_scores(s, "entropy")


def test_nothing_recorded_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one epoch"):
        quality_scores(SampleSignals(torch.tensor([0, 1]), 2))


def test_flags_threshold_and_its_validation() -> None:
    values = np.array([0.1, 0.49, 0.5, 0.9])
    assert flag_issues(values).tolist() == [True, True, False, False]
    assert flag_issues(values, 0.2).tolist() == [True, False, False, False]
    for bad in (1.5, -0.1, "median"):
        with pytest.raises(ValueError, match="threshold"):
            flag_issues(values, bad)


def test_mixture_finds_a_low_component_and_is_monotone() -> None:
    rng = np.random.default_rng(0)
    low = np.clip(rng.normal(0.15, 0.08, 300), 0, 1)
    high = np.clip(rng.normal(0.85, 0.05, 700), 0, 1)
    values = np.concatenate([low, high])
    posterior = low_component_posterior(values)
    flagged = flag_issues(values, "mixture")
    assert abs(flagged.mean() - 0.3) < 0.02
    assert flagged[:300].mean() > 0.97 and flagged[300:].mean() < 0.01
    order = np.argsort(values, kind="stable")
    assert (np.diff(posterior[order]) <= 1e-12).all()
    # a wide high component must not claim the far low tail back
    wide = np.concatenate([rng.normal(0.5, 0.02, 500), rng.normal(0.8, 0.3, 500), [-5.0]])
    assert low_component_posterior(wide)[-1] >= low_component_posterior(wide)[:500].max() - 1e-9


def test_report_numbers_against_a_direct_count(tmp_path) -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    # samples 1, 4, 7 disagree with their label in every pass; 1 and 4 prefer class 2
    predicted = [[0, 2, 0, 1, 2, 2, 2, 1], [0, 2, 0, 1, 2, 2, 2, 0], [0, 2, 1, 1, 2, 2, 2, 0]]
    s = _recorded(predicted, labels)
    issues = find_label_issues(s, classes=["a", "b", "c"])
    assert issues.flagged.tolist() == [False, True, False, False, True, False, False, True]
    assert issues.noise_rate == pytest.approx(3 / 8)
    np.testing.assert_allclose(issues.class_noise_rates(), [1 / 3, 1 / 2, 1 / 3])
    expected_likely = [0, 2, 0, 1, 2, 2, 2, 0]  # unflagged: the given label
    assert issues.likely.tolist() == expected_likely
    assert issues.confusion() == [(0, 2, 1), (1, 2, 1), (2, 0, 1)]
    ranked = issues.ranked()
    assert set(ranked[:3].tolist()) == {1, 4, 7}
    assert (np.diff(issues.score[ranked]) >= 0).all()
    assert issues.evaluation() is None  # no truth recorded

    issues.write_csv(tmp_path / "issues.csv")
    with (tmp_path / "issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == ranked.tolist()
    by_index = {int(r["index"]): r for r in rows}
    assert by_index[1]["likely_class"] == "c" and by_index[1]["given_class"] == "a"
    assert [int(by_index[i]["flagged"]) for i in range(8)] == issues.flagged.astype(int).tolist()
    assert float(by_index[2]["score"]) == pytest.approx(issues.score[2], rel=1e-5)
    summary = issues.summary()
    assert summary["flagged"] == 3 and summary["class_noise_rates"]["b"] == 0.5
    assert summary["given_to_likely"][0] == {"given": "a", "likely": "c", "count": 1}
    assert "3 of 8 training labels flagged" in issues.headline()


def test_evaluation_uses_the_truth_only_to_report() -> None:
    labels = [0, 1, 2, 0]
    s = _recorded([[0, 1, 0, 1], [0, 1, 0, 1]], labels)
    corrupted = np.array([False, False, True, True])
    issues = find_label_issues(s)
    truth = type(issues)(**{**issues.__dict__, "corrupted": corrupted})
    assert truth.flagged.tolist() == issues.flagged.tolist()  # flags never read the truth
    ev = truth.evaluation()
    assert ev["auroc"] == pytest.approx(auroc(-issues.score, corrupted))
    assert ev["precision"] == 1.0 and ev["recall"] == 1.0 and ev["precision_at_k"] == 1.0
