"""Instance-dependent label noise: where a label flips to depends on the image.

Xia et al., "Part-dependent Label Noise: Towards Instance-dependent Label Noise",
NeurIPS 2020, generate it as their code's ``get_instance_noisy_label`` does (tools.py of
github.com/xiaoboxia/Part-dependent-label-noise). For sample ``i`` with image ``x_i``
(flattened) and true class ``y_i``:

1. a flip rate ``q_i`` is drawn from the normal ``N(rate, 0.1^2)`` truncated to [0, 1];
2. a random projection ``W_c`` (``d x K``, standard normal entries; one per class) gives
   the scores ``s = x_i W_{y_i}``; the true class is excluded (``s_{y_i} = -inf``);
3. the row ``p = q_i softmax(s)``, then ``p_{y_i} = 1 - q_i``, and the label is drawn from
   ``p``.

So each sample keeps its label with probability ``1 - q_i`` exactly: *whether* a label
flips does not depend on the image, *where* it flips to does. The expected realised rate
is the mean of the truncated normal, which is ``rate`` only away from the ends of [0, 1]
(within 0.05 points from 0.3 to 0.7): ``rate=0`` flips ``0.1 sqrt(2/pi)`` = 8.0 % of the
labels, ``rate=0.1`` 12.9 %, ``rate=0.2`` 20.6 %, ``rate=1`` 92.0 %, as the authors' code
does.

Departures from the authors' code, each for a stated reason:

* **Random numbers.** They seed numpy's and torch's global generators and draw, in this
  order: the flip rates (scipy's ``truncnorm.rvs`` on numpy's global state), every
  class's ``W`` at once (``np.random.randn(K, d, K)``), one ``np.random.choice`` per sample,
  then 1,000 indices for a debugging loop whose result is unused. Here independent numpy
  ``Generator`` streams are spawned from ``SeedSequence(seed)``: one for the flip rates,
  one for a uniform per sample, one for each class's ``W_c`` (so ``W_c`` does not depend
  on which other classes are present, and the ``K x d x K`` array never exists at once:
  30 million numbers for CIFAR-100). No global generator of numpy or torch is touched
  or read. The distributions are theirs; the numbers are not.
* **Truncated normal.** scipy is not a dependency of mwnet, so the flip rates come from
  rejection sampling with numpy (normal draws outside [0, 1] are discarded), not scipy's
  inversion: the same distribution.
* **Arithmetic.** They project in float32 on the GPU through torch; here it is float64
  numpy on the CPU, a chunk of images at a time.
* **Feature scale.** They project the raw pixel values 0..255 (their ``.npy`` arrays with
  no transform); here ``uint8`` pixels are divided by 255 first, as torchvision's
  ``ToTensor`` would (floating-point images are used as given). The scores are theirs
  divided by 255; on CIFAR or Fashion-MNIST images they still spread over tens, so the
  softmax is close to the argmax of the scores, as theirs is, but on small or dark images
  it is softer.
* **Sampling a row.** They call ``np.random.choice(p=row)``; here one uniform per sample
  goes through the row's cumulative sum, which ends at exactly 1 on its last class of
  non-zero probability: the same distribution.
* **What is corrupted.** They corrupt the whole training set and then split a noisy
  validation set off it; mwnet corrupts only the training part after the clean meta set
  is set aside, as for every noise model.
* **Fewer than two classes** are refused (their code would draw from a row of NaN).
* **The record.** They return the labels only; here the :class:`Corruption` record adds
  the realised rate and the empirical transition, and as ``expected_transition`` the mean
  of the per-sample rows ``p`` over the samples of each true class (a zero row for a class
  without samples): the matrix a class-conditional model with the same class-level
  confusion would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mwnet.data._pixels import ImagesLike, as_image_array, pixel_rows
from mwnet.data._validate import LabelsLike, as_label_array, check_seed
from mwnet.data.corruption import Corruption, check_rate, corruption_record
from mwnet.data.errors import DataError

FLIP_RATE_STD = 0.1
"""The standard deviation of the flip rates' normal before truncation (the authors'
``norm_std``)."""

CHUNK = 2048
"""Images projected at a time: 2048 CIFAR images are 50 MB as float64."""


def truncated_normal(
    rng: np.random.Generator, n: int, mean: float, std: float, low: float = 0.0, high: float = 1.0
) -> np.ndarray:
    """``n`` draws from ``N(mean, std^2)`` truncated to ``[low, high]``, by rejection.

    Draws outside the interval are discarded and more are drawn, in batches of twice what
    is still missing, so the result is a fixed function of the generator's state. With the
    mean inside the interval at least half of every batch is kept.
    """
    if not std > 0:
        raise DataError(f"the flip rates' standard deviation must be positive, got {std!r}")
    out = np.empty(n, dtype=np.float64)
    filled = 0
    while filled < n:
        draws = rng.normal(mean, std, size=2 * (n - filled) + 16)
        kept = draws[(draws >= low) & (draws <= high)][: n - filled]
        out[filled : filled + len(kept)] = kept
        filled += len(kept)
    return out


@dataclass(frozen=True, eq=False)
class InstanceDraws:
    """Every random number the instance noise of ``n`` samples uses, drawn before any
    arithmetic, so that another implementation given the same draws must give the same
    labels.

    Attributes:
        flip_rates: ``q``, float64 ``(n,)`` in [0, 1].
        uniforms: float64 ``(n,)`` in [0, 1): sample ``i``'s label is the first class at
            which its row's cumulative sum exceeds ``uniforms[i]``.
        num_features, num_classes, seed: what :meth:`projection` draws from.
    """

    flip_rates: np.ndarray
    uniforms: np.ndarray
    num_features: int
    num_classes: int
    seed: int

    def projection(self, c: int) -> np.ndarray:
        """``W_c``, the ``d x K`` standard normal projection of class ``c``'s images."""
        stream = np.random.SeedSequence(self.seed).spawn(3)[2].spawn(self.num_classes)[c]
        return np.random.default_rng(stream).standard_normal((self.num_features, self.num_classes))


def instance_draws(
    n: int, num_features: int, num_classes: int, rate: float, seed: int
) -> InstanceDraws:
    """The random numbers :func:`corrupt_instances` uses for ``n`` samples."""
    rates, sampling, _ = np.random.SeedSequence(int(seed)).spawn(3)
    return InstanceDraws(
        flip_rates=truncated_normal(np.random.default_rng(rates), n, rate, FLIP_RATE_STD),
        uniforms=np.random.default_rng(sampling).random(n),
        num_features=int(num_features),
        num_classes=int(num_classes),
        seed=int(seed),
    )


def flip_rows(scores: np.ndarray, true_class: int, flip_rates: np.ndarray) -> np.ndarray:
    """Rows ``p`` of samples of one true class: ``q softmax(scores)`` over the other classes,
    ``1 - q`` on the true class."""
    others = scores.copy()
    others[:, true_class] = -np.inf
    others -= others.max(axis=1, keepdims=True)  # exp of at most 0: no overflow
    e = np.exp(others)
    rows = flip_rates[:, None] * (e / e.sum(axis=1, keepdims=True))
    rows[:, true_class] = 1.0 - flip_rates
    return rows


def draw_from_rows(rows: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Each row's label by inversion: the first class whose cumulative sum exceeds the
    sample's uniform. The sum is set to exactly 1 from the row's last class of non-zero
    probability on, so rounding can neither pick a class of probability 0 nor run off
    the end."""
    k = rows.shape[1]
    cdf = np.cumsum(rows, axis=1)
    last = k - 1 - np.argmax(rows[:, ::-1] > 0, axis=1)
    cdf[np.arange(k)[None, :] >= last[:, None]] = 1.0
    return (cdf <= uniforms[:, None]).sum(axis=1).astype(np.int64)


def corrupt_instances(
    images: ImagesLike,
    labels: LabelsLike,
    num_classes: int,
    rate: float,
    seed: int,
    index: torch.Tensor | np.ndarray | None = None,
) -> Corruption:
    """Draw instance-dependent noisy labels (Xia et al. 2020, see the module docstring).

    Apply it to the training part only, after :func:`mwnet.data.meta_split`.

    Args:
        images: ``(N, ...)`` ``uint8`` (pixels / 255) or floating-point images; a torch
            tensor or a numpy array, read a chunk at a time.
        labels: clean labels, 1-d integers in ``[0, num_classes)``, one per image.
        num_classes: ``K``, at least 2.
        rate: the mean of the flip rates' normal, in [0, 1].
        seed: non-negative integer; same seed and images, same labels.
        index: when given, the samples are ``images[index]`` (no copy of the images).

    Raises:
        DataError: rate outside [0, 1], fewer than 2 classes, labels out of range, not one
            image per label.
    """
    clean = as_label_array(labels, num_classes)
    check_seed(seed)
    p = check_rate(rate)
    k = int(num_classes)
    if k < 2:
        raise DataError("instance noise needs at least 2 classes (a class to flip to)")
    pixels, index = as_image_array(images, len(clean), index)
    d = int(np.prod(pixels.shape[1:]))
    draws = instance_draws(len(clean), d, k, p, seed)
    new = np.empty_like(clean)
    row_sums = np.zeros((k, k))
    for c in np.unique(clean).tolist():
        w = draws.projection(c)
        where = np.flatnonzero(clean == c)
        for start in range(0, len(where), CHUNK):
            rows_of = where[start : start + CHUNK]
            rows = flip_rows(pixel_rows(pixels, index, rows_of) @ w, c, draws.flip_rates[rows_of])
            new[rows_of] = draw_from_rows(rows, draws.uniforms[rows_of])
            row_sums[c] += rows.sum(axis=0)
    counts = np.bincount(clean, minlength=k).astype(np.float64)[:, None]
    expected = np.divide(row_sums, counts, out=np.zeros_like(row_sums), where=counts > 0)
    return corruption_record(clean, new, k, expected, "instance", p, seed)
