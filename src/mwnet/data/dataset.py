"""The in-memory dataset record shared by every source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mwnet.data.errors import DataError


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole image classification split held in memory.

    Datasets in the settings we care about (CIFAR, Fashion-MNIST, a few thousand user
    images) fit in memory as ``uint8``; keeping them as one tensor lets batching and
    augmentation run on the training device without per-image Python work.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``[0, len(classes))``.
        classes: class names; index ``i`` names label ``i``.
        name: a short name for reports (``"cifar10"``, a folder name, ...).
        paths: for sets read from image files, each sample's file path (so a report can
            point at the file); None for sets stored as arrays (IDX, CIFAR).

    Instances compare by identity: element-wise tensor equality has no single truth
    value, so a generated ``__eq__`` would only raise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"{self.name}: labels must be an int64 tensor (N,), "
                f"got {self.labels.dtype} with shape {tuple(self.labels.shape)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
        ):
            raise DataError(
                f"{self.name}: labels must lie in [0, {len(self.classes)}), "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """Return the samples at ``indices`` (e.g. the train or meta part of a split)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        paths = None if self.paths is None else tuple(self.paths[i] for i in idx.tolist())
        return ImageDataset(
            self.images[idx], self.labels[idx], list(self.classes), self.name, paths
        )

    def with_labels(self, labels: torch.Tensor) -> ImageDataset:
        """Return the same images with replacement labels (e.g. after corruption)."""
        return ImageDataset(self.images, labels, list(self.classes), self.name, self.paths)
