"""Annotator-like label noise: the images that look most like another class get its label.

Chen et al., "Beyond Class-Conditional Assumption: A Primary Attempt to Combat
Instance-Dependent Label Noise", AAAI 2021 (code: github.com/chenpf1025/IDN,
``mnist_gen_dependent.py`` and ``cifar10_gen_dependent.py``) model the way annotators
err: an image is mislabelled when it resembles another class, and into that class. A
scorer trained on the clean labels gives each sample's probabilities over the classes,
averaged over its training; a sample's mislabelling score is its highest probability of
a *wrong* class; the ``rate`` share of samples with the highest scores take their most
probable wrong class as the label. Every chosen label changes, so the realised rate is
``rate`` up to rounding to whole samples.

Unlike the class-conditional models and ``instance`` noise, nothing here is random but
the order of samples whose scores tie: the same images and labels give the same labels.
The record's ``expected_transition`` is therefore the empirical one.

Departures from the authors' code, each for a stated reason:

* **The scorer.** They train a CNN (MNIST: 20 epochs; CIFAR-10: WRN-28-10, 150 epochs) and
  average its softmax outputs over the training set after every epoch. Here the scorer
  is a softmax regression on the flattened pixels, each standardised by its mean and
  standard deviation over the samples (a constant pixel is left centred, not scaled),
  with an L2 penalty on the weights, fitted by full-batch L-BFGS in float64
  (``torch.optim.LBFGS``, strong-Wolfe line search, from zero weights) for a fixed number
  of iterations; the probabilities are averaged over the iterates after each iteration.
  It costs one pass over the images per objective evaluation (one or two per
  iteration, fewer once it has converged; 49,000 CIFAR-10 images took 7 s a pass on 2 CPU
  cores), needs no GPU and no random initialisation, and is deterministic; it is a
  weaker judge of resemblance than a CNN, so which images it calls ambiguous differs from
  theirs.
* **How many flip.** They relabel ``int(rate * N)`` samples (rounded down; and ``rate * N
  < 1`` relabels *every* sample, since ``argsort(...)[-0:]`` is the whole array); here
  ``round(rate * N)`` samples, none for ``rate * N < 0.5``.
* **Ties.** ``np.argsort``'s order decides among equal scores in theirs; here the seed
  does (a seeded permutation before a stable sort), so ``seed`` has a use.
* **The images it judges.** They score the whole training set; mwnet scores and
  corrupts only the training part after the clean meta set is set aside, and its scorer
  is trained on that part's clean labels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from mwnet.data._pixels import ImagesLike, as_image_array, pixel_rows
from mwnet.data._validate import LabelsLike, as_label_array, check_seed
from mwnet.data.corruption import Corruption, check_rate, corruption_record
from mwnet.data.errors import DataError

SCORER_ITERATIONS = 30
"""L-BFGS iterations of the scorer; its probabilities are averaged over all of them."""

SCORER_WEIGHT_DECAY = 1e-3
"""The L2 penalty ``lambda / 2 * ||W||^2`` on the scorer's weights (not its biases)."""

CHUNK = 4096
"""Images standardised and multiplied at a time: 4096 CIFAR images are 100 MB as float64."""


class PixelSoftmaxRegression:
    """The scorer's objective on standardised pixels, evaluated a chunk of images at a time.

    ``evaluate(weights, bias)`` returns the mean cross-entropy plus the L2 penalty, its
    gradients, and every sample's softmax probabilities (``N x K``).
    """

    def __init__(
        self,
        pixels: np.ndarray,
        index: np.ndarray | None,
        labels: np.ndarray,
        num_classes: int,
        weight_decay: float = SCORER_WEIGHT_DECAY,
        chunk: int = CHUNK,
    ) -> None:
        self.pixels, self.index, self.chunk = pixels, index, int(chunk)
        self.labels = torch.from_numpy(labels)
        self.n, self.k, self.weight_decay = len(labels), int(num_classes), float(weight_decay)
        total = lowest = highest = None
        for rows in self._slices():  # two passes: the mean first, then the deviations
            x = self._rows(rows)
            if total is None:
                total, lowest, highest = x.sum(axis=0), x.min(axis=0), x.max(axis=0)
            else:
                total += x.sum(axis=0)
                np.minimum(lowest, x.min(axis=0), out=lowest)
                np.maximum(highest, x.max(axis=0), out=highest)
        self.mean = total / self.n
        squares = sum(((self._rows(s) - self.mean) ** 2).sum(axis=0) for s in self._slices())
        # a constant pixel's computed deviation is rounding (1e-17), not spread: divide
        # by 1, not by it
        self.std = np.where(highest > lowest, np.sqrt(squares / self.n), 1.0)
        self.num_features = len(self.mean)

    def _slices(self) -> list[np.ndarray]:
        return [np.arange(s, min(s + self.chunk, self.n)) for s in range(0, self.n, self.chunk)]

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        return pixel_rows(self.pixels, self.index, rows)

    @torch.no_grad()
    def evaluate(
        self, weights: torch.Tensor, bias: torch.Tensor
    ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, gradient of ``weights``, gradient of ``bias``, probabilities).

        The standardisation is folded into the weights rather than applied to every
        chunk of pixels: ``((x - m) / s) W = x (W / s) - m (W / s)``, and the weights'
        gradient ``((x - m) / s)^T R = (x^T R - m (1^T R)) / s``.
        """
        mean, std = torch.from_numpy(self.mean), torch.from_numpy(self.std)
        scaled = weights / std[:, None]
        shift = bias - mean @ scaled
        loss = 0.0
        raw_grad, grad_b = torch.zeros_like(weights), torch.zeros_like(bias)
        probs = torch.empty(self.n, self.k, dtype=torch.float64)
        for rows in self._slices():
            x = torch.from_numpy(self._rows(rows))
            log_p = torch.log_softmax(x @ scaled + shift, dim=1)
            y = self.labels[rows]
            loss -= float(log_p.gather(1, y[:, None]).sum())
            residual = log_p.exp()
            probs[rows] = residual
            residual[torch.arange(len(rows)), y] -= 1.0  # d(cross-entropy)/d(logits)
            raw_grad += x.T @ residual
            grad_b += residual.sum(dim=0)
        grad_w = (raw_grad - mean[:, None] * grad_b[None, :]) / std[:, None]
        loss = loss / self.n + 0.5 * self.weight_decay * float((weights * weights).sum())
        return loss, grad_w / self.n + self.weight_decay * weights, grad_b / self.n, probs


def scorer_probabilities(
    images: ImagesLike,
    labels: LabelsLike,
    num_classes: int,
    index: torch.Tensor | np.ndarray | None = None,
    iterations: int = SCORER_ITERATIONS,
    weight_decay: float = SCORER_WEIGHT_DECAY,
) -> np.ndarray:
    """Each sample's class probabilities (``N x K`` float64) from a softmax regression on
    its standardised pixels, trained on ``labels`` by L-BFGS and averaged over the
    ``iterations`` iterates (see the module docstring)."""
    clean = as_label_array(labels, num_classes)
    pixels, index = as_image_array(images, len(clean), index)
    if not isinstance(iterations, int) or iterations < 1:
        raise DataError(f"the scorer needs at least 1 iteration, got {iterations!r}")
    model = PixelSoftmaxRegression(pixels, index, clean, num_classes, weight_decay)
    weights = torch.zeros(model.num_features, model.k, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(model.k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=1, max_eval=30, line_search_fn="strong_wolfe"
    )
    memo: dict[str, tuple] = {}

    def evaluate() -> tuple[float, torch.Tensor]:
        """The objective at the current weights, computed once per point."""
        key = memo.get("at")
        if key is None or not (torch.equal(key[0], weights) and torch.equal(key[1], bias)):
            memo["at"] = (weights.detach().clone(), bias.detach().clone())
            memo["value"] = model.evaluate(weights.detach(), bias.detach())
        return memo["value"][0], memo["value"][3]

    def closure() -> torch.Tensor:
        evaluate()
        loss, grad_w, grad_b, _ = memo["value"]
        weights.grad, bias.grad = grad_w.clone(), grad_b.clone()
        return torch.tensor(loss, dtype=torch.float64)

    total = np.zeros((len(clean), model.k))
    for _ in range(iterations):
        optimizer.step(closure)
        total += evaluate()[1].numpy()
    return total / iterations


def _count(rate: float, n: int) -> int:
    """How many of ``n`` samples a rate relabels: ``rate * n`` rounded half up."""
    return math.floor(rate * n + 0.5)


def relabel_most_confusable(
    probabilities: np.ndarray, labels: LabelsLike, rate: float, seed: int
) -> np.ndarray:
    """The labels after the ``round(rate * N)`` samples of highest wrong-class probability
    take their most probable wrong class (ties in the score in a seeded random order;
    ties between wrong classes to the lower index)."""
    clean = as_label_array(labels)
    check_seed(seed)
    p = check_rate(rate)
    probs = np.asarray(probabilities, dtype=np.float64)
    n = len(clean)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] < 2:
        raise DataError(
            f"probabilities must be N x K with K >= 2 for {n} labels, got shape {probs.shape}"
        )
    wrong = probs.copy()
    wrong[np.arange(n), clean] = -np.inf
    target, score = wrong.argmax(axis=1), wrong.max(axis=1)
    count = _count(p, n)
    order = np.random.default_rng(int(seed)).permutation(n)
    chosen = order[np.argsort(-score[order], kind="stable")[:count]]
    new = clean.copy()
    new[chosen] = target[chosen]
    return new


def corrupt_annotator(
    images: ImagesLike,
    labels: LabelsLike,
    num_classes: int,
    rate: float,
    seed: int,
    index: torch.Tensor | np.ndarray | None = None,
) -> Corruption:
    """Relabel the ``rate`` share of most confusable samples into the class each most
    resembles (Chen et al. 2021, see the module docstring).

    Apply it to the training part only, after :func:`mwnet.data.meta_split`.

    Args:
        images: ``(N, ...)`` images (torch or numpy, ``uint8`` or floating point).
        labels: clean labels, one per image; the scorer is trained on them.
        num_classes: ``K``, at least 2.
        rate: the share of samples relabelled, in [0, 1].
        seed: orders samples whose scores tie.
        index: when given, the samples are ``images[index]`` (no copy of the images).
    """
    clean = as_label_array(labels, num_classes)
    check_seed(seed)
    p = check_rate(rate)
    k = int(num_classes)
    if k < 2:
        raise DataError("annotator noise needs at least 2 classes (a class to mislabel into)")
    as_image_array(images, len(clean), index)  # refuse a mismatch even when nothing flips
    if _count(p, len(clean)) == 0:  # nothing to relabel: no scorer to train
        new = clean.copy()
    else:
        probs = scorer_probabilities(images, clean, k, index=index)
        new = relabel_most_confusable(probs, clean, p, seed)
    record = corruption_record(clean, new, k, np.zeros((k, k)), "annotator", p, seed)
    return dataclasses.replace(record, expected_transition=record.transition.clone())
