"""Annotator-like label noise (after Chen et al. 2021): the relabelling rule against hand
computations and a sorting reference, the scorer against autograd and torch's own L-BFGS,
the ambiguous images being the ones relabelled, and the path through the config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rounding import assert_within_order_noise, gamma

from mwnet.data import DataError, corrupt, corrupt_annotator
from mwnet.data.annotator_noise import (
    PixelSoftmaxRegression,
    relabel_most_confusable,
    scorer_probabilities,
)
from mwnet.train.config import load_config
from mwnet.train.experiment import prepare_data

F64 = torch.float64

HAND_PROBS = np.array(
    [
        [0.50, 0.40, 0.10],  # label 0: wrong-class best 0.40 -> 1
        [0.20, 0.30, 0.50],  # label 0: 0.50 -> 2
        [0.10, 0.80, 0.10],  # label 1: 0.10, a tie of 0 and 2 -> 0 (the lower index)
        [0.45, 0.10, 0.45],  # label 2: 0.45 -> 0
        [0.30, 0.60, 0.10],  # label 1: 0.30 -> 0
    ]
)
HAND_LABELS = np.array([0, 0, 1, 2, 1])


def test_relabel_a_hand_computed_case() -> None:
    # scores 0.40, 0.50, 0.10, 0.45, 0.30: the top two are samples 1 and 3, then 0
    assert relabel_most_confusable(HAND_PROBS, HAND_LABELS, 0.4, 0).tolist() == [0, 2, 1, 0, 1]
    assert relabel_most_confusable(HAND_PROBS, HAND_LABELS, 0.6, 0).tolist() == [1, 2, 1, 0, 1]
    assert relabel_most_confusable(HAND_PROBS, HAND_LABELS, 0.0, 0).tolist() == [0, 0, 1, 2, 1]


def test_a_rule_that_keeps_the_true_class_in_the_running_differs() -> None:
    """The planted bug: scoring by the highest probability of *any* class picks sample 2
    (0.80 on its own class) and 'relabels' it to itself, so one label fewer changes."""
    top = HAND_PROBS.max(axis=1)
    chosen = np.argsort(-top, kind="stable")[:2]  # samples 2 and 4
    wrong = HAND_LABELS.copy()
    wrong[chosen] = HAND_PROBS.argmax(axis=1)[chosen]
    right = relabel_most_confusable(HAND_PROBS, HAND_LABELS, 0.4, 0)
    assert (wrong != HAND_LABELS).sum() == 0 and (right != HAND_LABELS).sum() == 2


def _reference_relabel(probs: np.ndarray, labels: np.ndarray, rate: float) -> list[int]:
    """Chen et al.'s rule written with loops: each sample's best wrong class (the first of
    equals) and its probability; the round(rate N) highest take it."""
    n, k = probs.shape
    best = []
    for i in range(n):
        j_best = None
        for j in range(k):
            if j != labels[i] and (j_best is None or probs[i, j] > probs[i, j_best]):
                j_best = j
        best.append((float(probs[i, j_best]), j_best))
    count = math.floor(rate * n + 0.5)
    ranked = sorted(range(n), key=lambda i: -best[i][0])
    new = [int(v) for v in labels]
    for i in ranked[:count]:
        new[i] = best[i][1]
    return new


@pytest.mark.parametrize(("n", "rate", "changed"), [(200, 0.3, 60), (100, 0.29, 29), (9, 0.05, 0)])
def test_relabel_matches_the_reference(n, rate, changed) -> None:
    """Also the count: round(rate N), so 0.29 of 100 is 29 (the authors' int() gives 28)
    and 0.05 of 9 is none (theirs: argsort(...)[-0:], every sample)."""
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(5), size=n)  # continuous: no ties
    labels = rng.integers(0, 5, n)
    new = relabel_most_confusable(probs, labels, rate, seed=3)
    assert new.tolist() == _reference_relabel(probs, labels, rate)
    assert int((new != labels).sum()) == changed


def test_ties_in_the_score_are_ordered_by_the_seed() -> None:
    probs, labels = np.full((40, 3), 1 / 3), np.zeros(40, dtype=np.int64)
    a = relabel_most_confusable(probs, labels, 0.5, seed=0)
    assert np.array_equal(a, relabel_most_confusable(probs, labels, 0.5, seed=0))
    b = relabel_most_confusable(probs, labels, 0.5, seed=1)
    assert (a != 0).sum() == (b != 0).sum() == 20 and not np.array_equal(a, b)
    assert set(a.tolist()) == {0, 1}  # ties between wrong classes: the lower index


def _standardised(images: np.ndarray) -> torch.Tensor:
    """The scorer's features, written from its definition: pixels / 255, minus each
    pixel's mean, over its (population) standard deviation, 1 for a constant pixel."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    constant = x.max(axis=0) == x.min(axis=0)
    return torch.from_numpy((x - x.mean(axis=0)) / np.where(constant, 1.0, x.std(axis=0)))


def _autograd_objective(x, labels, w, b, decay):
    return F.cross_entropy(x @ w + b, labels) + 0.5 * decay * (w * w).sum()


def test_the_scorers_gradient_is_the_derivative_of_its_loss() -> None:
    n, k, decay = 30, 3, 0.01
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 3, 4), dtype=np.uint8)
    images[:, 0, 0, 0] = 7  # a constant pixel: centred, not scaled
    labels = rng.integers(0, k, n)
    w = torch.from_numpy(rng.normal(0, 0.3, (12, k))).requires_grad_()
    b = torch.from_numpy(rng.normal(0, 0.3, k)).requires_grad_()
    x, y = _standardised(images), torch.from_numpy(labels)
    loss = _autograd_objective(x, y, w, b, decay)
    loss.backward()
    model = PixelSoftmaxRegression(images, None, labels, k, weight_decay=decay, chunk=7)
    value, grad_w, grad_b, probs = model.evaluate(w.detach(), b.detach())
    # Every compared number is a sum of at most n * (12 + k) = 450 products of terms from
    # the two computations' inputs, through fewer than 20 further roundings (exp, log,
    # the standardisation, the final scaling). Each side is within gamma_470 times the sum
    # of its terms' magnitudes of the exact value (Higham, section 4.2); the magnitudes
    # here are below 10 (standardised pixels below 6, weights below 1.5, probabilities
    # below 1), so 2 * gamma_470 * 10 * (n * 15) bounds their difference: 2e-10. A wrong
    # sign, a missing 1/n or a penalty on the bias moves them by more than 1e-3.
    tol = 2 * gamma(470, F64) * 10 * n * 15
    assert abs(value - loss.item()) <= tol
    assert (grad_w - w.grad).abs().max() <= tol
    assert (grad_b - b.grad).abs().max() <= tol
    assert (probs - torch.softmax(x @ w + b, dim=1)).abs().max() <= tol


def _reference_probabilities(x, labels, k, iterations, decay, order=None):
    """torch's own L-BFGS on the autograd objective, from zero, with the scorer's settings;
    the softmax averaged over the iterates after each iteration. ``order`` permutes the
    samples (the result is put back in the original order)."""
    if order is not None:
        x, labels = x[order], labels[order]
    w = torch.zeros(x.shape[1], k, dtype=F64, requires_grad=True)
    b = torch.zeros(k, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=1, max_eval=30, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _autograd_objective(x, labels, w, b, decay)
        loss.backward()
        return loss

    total = torch.zeros(len(labels), k, dtype=F64)
    for _ in range(iterations):
        opt.step(closure)
        with torch.no_grad():
            total += torch.softmax(x @ w + b, dim=1)
    mean = total / iterations
    if order is not None:
        mean = mean[torch.from_numpy(np.argsort(order))]
    return mean


def test_the_scorer_averages_lbfgs_iterates() -> None:
    """Against torch's L-BFGS on the autograd objective, within the rounding noise that
    reordering the samples alone causes in that reference (a run of the same steps in
    another summation order); averaging only the last iterate, or the starting point too,
    moves the result by about 1e-2."""
    n, k, decay, iterations = 60, 3, 1e-3, 4
    rng = np.random.default_rng(1)
    labels = rng.integers(0, k, n)
    images = (rng.normal(0, 30, (n, 1, 2, 4)) + 40 * labels[:, None, None, None] + 100).clip(0, 255)
    images = images.astype(np.uint8)
    x, y = _standardised(images), torch.from_numpy(labels)
    actual = scorer_probabilities(images, labels, k, iterations=iterations, weight_decay=decay)
    reference = _reference_probabilities(x, y, k, iterations, decay)
    others = [
        _reference_probabilities(
            x, y, k, iterations, decay, np.random.default_rng(s).permutation(n)
        )
        for s in range(3)
    ]
    assert_within_order_noise(torch.from_numpy(actual), reference, others, "probabilities")


def _ambiguous_set(n_per_class: int = 200, ambiguous: int = 30, seed: int = 0):
    """Three classes around prototypes in 16 pixels; the first ``ambiguous`` images of
    class 0 sit halfway between the prototypes of classes 0 and 1."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1, (3, 16))
    labels = np.repeat(np.arange(3), n_per_class)
    centres = protos[labels]
    centres[:ambiguous] = 0.5 * (protos[0] + protos[1])
    images = (centres + rng.normal(0, 0.3, centres.shape)).reshape(-1, 1, 4, 4)
    is_ambiguous = np.zeros(len(labels), dtype=bool)
    is_ambiguous[:ambiguous] = True
    return images, labels, is_ambiguous


def test_ambiguous_images_are_relabelled_into_the_class_they_resemble() -> None:
    """Two clusters of class 0, one typical and one halfway to class 1: at a rate of 5 %,
    a rule blind to the images would flip 5 % of each cluster; here 25 of the 30 halfway
    images flip (the linear scorer fits a few of them as class 0 by the end of its
    training, which the averaging over its iterates only partly undoes), none of the 170
    typical ones, and the flips go to class 1."""
    images, labels, ambiguous = _ambiguous_set()
    rate = ambiguous.mean()  # 30 of 600
    c = corrupt_annotator(images, labels, 3, rate, seed=0)
    flipped = c.corrupted.numpy()
    assert c.realized_rate == 30 / 600 and flipped.sum() == 30
    assert flipped[ambiguous].sum() >= 25
    typical_zero = (labels == 0) & ~ambiguous
    assert flipped[typical_zero].sum() == 0
    assert (c.labels.numpy()[flipped & ambiguous] == 1).all()
    # the parts compose: the labels are the rule applied to the scorer's probabilities
    probs = scorer_probabilities(images, labels, 3)
    assert np.array_equal(c.labels.numpy(), relabel_most_confusable(probs, labels, rate, 0))
    assert torch.equal(c.expected_transition, c.transition)
    assert c.transition[0, 1] == pytest.approx(flipped[labels == 0].sum() / 200, abs=1e-15)


def test_argument_errors() -> None:
    images, labels = np.zeros((4, 1, 2, 2), dtype=np.uint8), [0, 1, 0, 1]
    with pytest.raises(DataError, match="at least 2 classes"):
        corrupt_annotator(images, [0, 0, 0, 0], 1, 0.2, 0)
    with pytest.raises(DataError, match="at least 1 iteration"):
        scorer_probabilities(images, labels, 2, iterations=0)
    with pytest.raises(DataError, match=r"N x K with K >= 2 for 4 labels, got shape \(3, 2\)"):
        relabel_most_confusable(np.full((3, 2), 0.5), labels, 0.5, 0)
    with pytest.raises(DataError, match="annotator noise reads the images"):
        corrupt(labels, 2, "annotator", 0.2, 0)
    with pytest.raises(DataError, match="3 images for 4 labels"):
        corrupt_annotator(images[:3], labels, 2, 0.0, 0)


def test_nothing_to_relabel_trains_no_scorer(monkeypatch) -> None:
    import mwnet.data.annotator_noise as annotator_noise

    def refuse(*args, **kwargs):
        raise AssertionError("the scorer was trained for nothing")

    monkeypatch.setattr(annotator_noise, "scorer_probabilities", refuse)
    c = corrupt_annotator(np.zeros((9, 1, 2, 2), dtype=np.uint8), [0, 1, 2] * 3, 3, 0.05, 0)
    assert c.realized_rate == 0.0 and c.labels.tolist() == [0, 1, 2] * 3
    empty = corrupt_annotator(np.zeros((0, 1, 2, 2), dtype=np.uint8), [], 3, 0.5, 0)
    assert empty.labels.numel() == 0 and empty.realized_rate == 0.0


def test_a_run_with_annotator_noise(tmp_path, write_idx_split) -> None:
    root = tmp_path / "fmnist"
    write_idx_split(root, "train", n=300, seed=0)
    write_idx_split(root, "test", n=20, seed=1)
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.download=false",
            "data.meta_per_class=2",
            "data.noise=annotator",
            "data.noise_rate=0.2",
            "model.name=mlp",
            "method.name=ce",
            "device=cpu",
            f"out_dir={tmp_path}",
        ],
    )
    data = prepare_data(cfg)
    direct = corrupt_annotator(data.train_images, data.true_labels, 10, 0.2, int(cfg.seed))
    assert torch.equal(data.train_labels, direct.labels)
    assert data.realized_noise_rate == 56 / 280 and data.noise_known  # round(0.2 * 280)
