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
        ids: for tables, each row's id (so a report names the row); None otherwise.
        feature_names: for tables, the name of each feature (channel); None otherwise.

    A table (``data.dataset=table``) is held the same way, each row a ``float32``
    ``(D, 1, 1)`` "image" of ``D`` channels: batching, sharding, normalisation (per
    channel, i.e. per feature) and the flattening models then treat rows like images
    without a second code path; only the ``uint8`` scaling and the augmentation, which
    have no meaning for features, are skipped (:func:`is_features`).

    Instances compare by identity: element-wise tensor equality has no single truth
    value, so a generated ``__eq__`` would only raise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    paths: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not (is_features(self.images) or self.images.dtype == torch.uint8) or (
            self.images.dim() != 4
        ):
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W) or float32 feature "
                f"rows (N, D, 1, 1), got {self.images.dtype} with shape {tuple(self.images.shape)}"
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
        if self.ids is not None and len(self.ids) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.ids)} ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """Return the samples at ``indices`` (e.g. the train or meta part of a split)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        paths = None if self.paths is None else tuple(self.paths[i] for i in idx.tolist())
        ids = None if self.ids is None else tuple(self.ids[i] for i in idx.tolist())
        return ImageDataset(
            self.images[idx],
            self.labels[idx],
            list(self.classes),
            self.name,
            paths,
            ids,
            self.feature_names,
        )

    def with_labels(self, labels: torch.Tensor) -> ImageDataset:
        """Return the same images with replacement labels (e.g. after corruption)."""
        return ImageDataset(
            self.images,
            labels,
            list(self.classes),
            self.name,
            self.paths,
            self.ids,
            self.feature_names,
        )


def is_features(images: torch.Tensor) -> bool:
    """The samples are table rows (``float32`` ``(N, D, 1, 1)``), not ``uint8`` images."""
    return images.dtype == torch.float32 and images.dim() == 4 and images.shape[2:] == (1, 1)
