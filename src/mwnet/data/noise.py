"""One entry point for every noise model, whatever it reads.

The class-conditional models of :mod:`mwnet.data.corruption` read only the labels; the
image-aware ones (:data:`IMAGE_NOISE`) read the images too. :func:`corrupt` takes both,
so a caller names the noise and never asks which kind it is, and :data:`NOISE_KINDS` is
the one list of valid names (the config's ``data.noise`` choices).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mwnet.data._pixels import ImagesLike
from mwnet.data._validate import LabelsLike
from mwnet.data.annotator_noise import corrupt_annotator
from mwnet.data.corruption import NOISE_TYPES, Corruption, MatrixLike, corrupt_labels
from mwnet.data.errors import DataError
from mwnet.data.instance_noise import corrupt_instances

IMAGE_NOISE: dict[str, Callable[..., Corruption]] = {
    "instance": corrupt_instances,
    "annotator": corrupt_annotator,
}
"""Noise models that read the images: name -> ``f(images, labels, num_classes, rate,
seed, index=...)``."""

NOISE_KINDS: tuple[str, ...] = (*NOISE_TYPES, *IMAGE_NOISE)
"""Every valid noise name."""


def corrupt(
    labels: LabelsLike,
    num_classes: int,
    noise: str,
    rate: float,
    seed: int,
    *,
    matrix: MatrixLike | None = None,
    images: ImagesLike | None = None,
    index: torch.Tensor | np.ndarray | None = None,
) -> Corruption:
    """Draw noisy labels from any noise model in :data:`NOISE_KINDS`.

    Args:
        labels, num_classes, rate, seed, matrix: as for
            :func:`mwnet.data.corrupt_labels`.
        noise: a name in :data:`NOISE_KINDS`.
        images: the images, read only by the models in :data:`IMAGE_NOISE`.
        index: the samples are ``images[index]``, in label order (None: all of
            ``images``); lets a caller pass a subset without copying the images.
    """
    reader = IMAGE_NOISE.get(noise)
    if reader is None:
        if noise not in NOISE_TYPES:
            raise DataError(f"unknown noise {noise!r}; expected one of {', '.join(NOISE_KINDS)}")
        return corrupt_labels(labels, num_classes, noise, rate, seed, matrix)
    if matrix is not None:
        raise DataError(f"a matrix was given but noise is {noise!r}; use noise='matrix'")
    if images is None:
        raise DataError(f"{noise} noise reads the images: pass images= (one per label)")
    return reader(images, labels, num_classes, rate, seed, index=index)
