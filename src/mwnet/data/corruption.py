"""Synthetic label noise: pure functions of (labels, num_classes, noise, rate, seed).

Every noise model is a row-stochastic transition matrix ``T`` with ``T[i, j]`` the
probability that a sample of true class ``i`` gets label ``j``; each label is drawn
independently from its row. Building the matrix first makes the models comparable,
lets :func:`transition_matrix` report the exact matrix a run used, and leaves a single
sampling routine to test.

Noise models (``p`` is ``rate``, ``K`` the number of classes, ``J`` the all-ones matrix):

``uniform``
    ``T = p/K * J + (1 - p) * I``, the paper's uniform noise. The drawn label may equal
    the true one, so the realised corruption rate is ``p (K - 1) / K``.
``uniform-exclusive``
    With probability ``p`` a *different* class, uniformly; realised rate ``p``.
``flip2``
    The paper's "flip" noise: each class ``c`` goes to two distinct other classes, chosen
    once at random from ``seed``, each with probability ``p/2``.
``pair``
    With probability ``p`` to the class ``(c + 1) mod K`` (pair / single-flip noise).
``asymmetric-cifar10``
    With probability ``p``: truck->automobile, bird->airplane, deer->horse, cat<->dog
    (indices 9->1, 2->0, 4->7, 3<->5); other classes are untouched.
``asymmetric-cifar100``
    CIFAR-100 "asym" noise as the CMW-Net code builds it (``noisify_cifar100_asymmetric``
    of the widely shared ``noise.py``): with probability ``p`` to the next class of its
    block, circularly. The 100 fine labels are cut into 20 blocks of 5 consecutive
    indices (0-4, 5-9, ..., 95-99), and class ``c`` goes to ``5 * (c // 5) + (c + 1) % 5``
    (0->1->2->3->4->0, 5->6->...->9->5, ...); every class moves, so the realised rate is
    ``p``. These blocks are *not* CIFAR-100's super-classes, although that code calls
    them so: the fine labels are numbered alphabetically, so block 0 (apple, aquarium
    fish, baby, bear, beaver) spans five different super-classes. This model reproduces
    the blocks, not real super-class noise. Needs ``num_classes=100``.
``asymmetric-fashion-mnist``
    With probability ``p``, between classes that look alike: T-shirt/top<->Shirt (0<->6),
    Pullover<->Coat (2<->4), Sandal<->Sneaker (5<->7), Ankle boot->Sneaker (9->7);
    Trouser, Dress and Bag are untouched.
``matrix``
    A user matrix ``M`` (array, or a ``.npy`` / ``.csv`` path), mixed with the identity
    as ``T = (1 - p) I + p M``; pass ``rate=1.0`` to use ``M`` exactly as given.

Two more noise models depend on the image, not only on its class, so no ``K x K`` matrix
describes them and they live in their own modules; :func:`mwnet.data.corrupt` runs any of
the models by name (``data.noise`` in a config):

``instance``
    Xia et al. (NeurIPS 2020): each sample flips with its own rate drawn around ``p``, to
    a class chosen by a random projection of its pixels (:mod:`mwnet.data.instance_noise`).
``annotator``
    After Chen et al. (AAAI 2021): the ``p`` share of images a classifier trained on the
    clean labels finds most like another class take that class's label
    (:mod:`mwnet.data.annotator_noise`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mwnet.data._validate import LabelsLike, as_label_array, check_num_classes, check_seed
from mwnet.data.errors import DataError

ASYMMETRIC_MAPS: dict[str, dict[int, int]] = {
    "asymmetric-cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # 20 blocks of 5 consecutive fine labels, each class to the next in its block
    "asymmetric-cifar100": {c: c - c % 5 + (c + 1) % 5 for c in range(100)},
    "asymmetric-fashion-mnist": {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5, 9: 7},
}
"""Source class -> target class of each fixed-map noise model (see the module docstring)."""

ASYMMETRIC_NUM_CLASSES: dict[str, int] = {
    "asymmetric-cifar10": 10,
    "asymmetric-cifar100": 100,
    "asymmetric-fashion-mnist": 10,
}
"""The number of classes each fixed-map noise model is defined for."""

NOISE_TYPES = ("uniform", "uniform-exclusive", "flip2", "pair", *ASYMMETRIC_MAPS, "matrix")

MatrixLike = np.ndarray | torch.Tensor | str | os.PathLike


@dataclass(frozen=True, eq=False)
class Corruption:
    """What a corruption did, so every run can report which samples were changed.

    Attributes:
        labels: the new labels, ``int64`` ``(N,)``.
        corrupted: ``bool`` ``(N,)``, true where the new label differs from the original.
        realized_rate: fraction of samples whose label changed.
        transition: empirical ``K x K`` matrix (``float64``): row ``i`` is the
            distribution of new labels among samples of true class ``i`` (all zeros for a
            class with no samples).
        expected_transition: the matrix the labels were drawn from.
        noise, rate, seed: the arguments, for the record.
    """

    labels: torch.Tensor
    corrupted: torch.Tensor
    realized_rate: float
    transition: torch.Tensor
    expected_transition: torch.Tensor
    noise: str
    rate: float
    seed: int


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the matrix structure and the per-sample draws.

    Keeping them apart means ``transition_matrix(..., seed)`` alone reproduces the exact
    matrix that ``corrupt_labels(..., seed)`` used.
    """
    structure, sampling = np.random.SeedSequence(int(seed)).spawn(2)
    return np.random.default_rng(structure), np.random.default_rng(sampling)


def load_matrix(matrix: MatrixLike) -> np.ndarray:
    """Read a transition matrix from an array or a ``.npy`` / ``.csv`` file."""
    if isinstance(matrix, torch.Tensor):
        return matrix.detach().cpu().double().numpy()
    if isinstance(matrix, (str, os.PathLike)):
        path = Path(matrix)
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False).astype(np.float64)
            if path.suffix == ".csv":
                return np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read transition matrix: {exc}") from exc
        raise DataError(f"{path}: transition matrix file must end in .npy or .csv")
    return np.asarray(matrix, dtype=np.float64)


def check_stochastic(matrix: np.ndarray, num_classes: int, atol: float = 1e-6) -> np.ndarray:
    """Check that ``matrix`` is a ``K x K`` row-stochastic matrix; return it renormalised."""
    if matrix.shape != (num_classes, num_classes):
        raise DataError(
            f"transition matrix must be {num_classes} x {num_classes}, got shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)) or (matrix < 0).any():
        raise DataError("transition matrix must be finite and non-negative")
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        raise DataError(
            f"transition matrix rows must sum to 1 (within {atol}); row {bad[0]} sums to "
            f"{sums[bad[0]]:.8g}"
        )
    return matrix / sums[:, None]


def check_rate(rate: float) -> float:
    """``rate`` as a float, refused unless it lies in [0, 1]."""
    if not isinstance(rate, (int, float, np.floating)) or not 0.0 <= float(rate) <= 1.0:
        raise DataError(f"noise rate must be in [0, 1], got {rate!r}")
    return float(rate)


def _build_matrix(
    noise: str, k: int, p: float, structure: np.random.Generator, matrix: MatrixLike | None
) -> np.ndarray:
    eye = np.eye(k)
    if noise == "uniform":
        return p / k * np.ones((k, k)) + (1 - p) * eye
    if noise == "uniform-exclusive":
        if k < 2:
            raise DataError("uniform-exclusive noise needs at least 2 classes")
        return (1 - p) * eye + p / (k - 1) * (np.ones((k, k)) - eye)
    if noise == "flip2":
        if k < 3:
            raise DataError("flip2 noise needs at least 3 classes (two other classes each)")
        t = (1 - p) * eye
        for c in range(k):
            others = np.array([j for j in range(k) if j != c])
            for j in structure.choice(others, size=2, replace=False):
                t[c, j] += p / 2
        return t
    if noise == "pair":
        if k < 2:
            raise DataError("pair noise needs at least 2 classes")
        t = (1 - p) * eye
        t[np.arange(k), (np.arange(k) + 1) % k] += p
        return t
    if noise in ASYMMETRIC_MAPS:
        expected = ASYMMETRIC_NUM_CLASSES[noise]
        if k != expected:
            raise DataError(f"{noise} noise is defined for {expected} classes, got num_classes={k}")
        t = eye.copy()
        for src, dst in ASYMMETRIC_MAPS[noise].items():
            t[src, src] = 1 - p
            t[src, dst] += p
        return t
    if noise == "matrix":
        if matrix is None:
            raise DataError("noise='matrix' needs the matrix argument (array or .npy/.csv path)")
        return (1 - p) * eye + p * check_stochastic(load_matrix(matrix), k)
    raise DataError(f"unknown noise {noise!r}; expected one of {', '.join(NOISE_TYPES)}")


def transition_matrix(
    noise: str, num_classes: int, rate: float, seed: int = 0, matrix: MatrixLike | None = None
) -> torch.Tensor:
    """Return the true ``K x K`` transition matrix (``float64``) of a noise model.

    It is the matrix :func:`corrupt_labels` samples from with the same arguments; the
    seed only matters for ``flip2``, whose target classes are random.
    """
    check_num_classes(num_classes)
    check_seed(seed)
    p = check_rate(rate)
    if matrix is not None and noise != "matrix":
        raise DataError(f"a matrix was given but noise is {noise!r}; use noise='matrix'")
    structure, _ = _streams(seed)
    return torch.from_numpy(_build_matrix(noise, int(num_classes), p, structure, matrix))


def corrupt_labels(
    labels: LabelsLike,
    num_classes: int,
    noise: str,
    rate: float,
    seed: int,
    matrix: MatrixLike | None = None,
) -> Corruption:
    """Draw noisy labels from a noise model; the input is not modified.

    Apply it to the training part only, after :func:`mwnet.data.meta_split` has set the
    clean meta set aside.

    Args:
        labels: clean labels, 1-d integers in ``[0, num_classes)``.
        num_classes: ``K``.
        noise: one of :data:`NOISE_TYPES` (see the module docstring).
        rate: ``p`` in ``[0, 1]``.
        seed: non-negative integer; same seed, same labels.
        matrix: the user matrix for ``noise="matrix"``.

    Raises:
        DataError: rate outside [0, 1], unknown noise (the valid names are listed), a
            matrix that is not ``K x K`` row-stochastic, labels out of range.
    """
    clean = as_label_array(labels, num_classes)
    t = transition_matrix(noise, num_classes, rate, seed, matrix).numpy()
    _, sampling = _streams(seed)
    k = int(num_classes)
    cdf = np.cumsum(t, axis=1)
    for c in range(k):  # end each CDF at exactly 1 on its last reachable class
        cdf[c, np.flatnonzero(t[c])[-1] :] = 1.0
    u = sampling.random(clean.shape[0])
    new = np.empty_like(clean)
    for c in range(k):
        where = np.flatnonzero(clean == c)
        new[where] = np.searchsorted(cdf[c], u[where], side="right")
    return corruption_record(clean, new, k, t, noise, rate, seed)


def corruption_record(
    clean: np.ndarray,
    new: np.ndarray,
    num_classes: int,
    expected: np.ndarray,
    noise: str,
    rate: float,
    seed: int,
) -> Corruption:
    """The :class:`Corruption` of drawn labels ``new`` (``int64``) against ``clean``: which
    changed, the realised rate and the empirical transition, shared by every noise model."""
    k = int(num_classes)
    corrupted = new != clean
    counts = np.bincount(clean * k + new, minlength=k * k).reshape(k, k).astype(np.float64)
    row = counts.sum(axis=1, keepdims=True)
    empirical = np.divide(counts, row, out=np.zeros_like(counts), where=row > 0)
    return Corruption(
        labels=torch.from_numpy(new),
        corrupted=torch.from_numpy(corrupted),
        realized_rate=float(corrupted.mean()) if corrupted.size else 0.0,
        transition=torch.from_numpy(empirical),
        expected_transition=torch.from_numpy(expected),
        noise=noise,
        rate=float(rate),
        seed=int(seed),
    )
