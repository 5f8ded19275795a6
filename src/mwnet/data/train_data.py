"""The data of one training run: its three sets in memory, and what was corrupted.

:func:`mwnet.data.prepare` builds it from the ``data.*`` config; the training loop, the
evaluation and the label-issue records read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainData:
    """The three sets of a run, in memory as uint8, with the record of what was corrupted."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    """Observed (possibly corrupted) labels: what the methods train on."""
    true_labels: torch.Tensor
    corrupted: torch.Tensor
    meta_images: torch.Tensor
    meta_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    realized_noise_rate: float | None
    """Share of training labels the synthetic noise changed (0.0 for a dataset's own
    labels, taken as right); None for a user's own images (``data.dataset`` folder or list)
    without synthetic noise: how many of their labels are wrong is not known."""
    source_index: torch.Tensor | None = None
    """Each training sample's index in the dataset's training split (stable across runs of
    any meta split, long tail or subset); None: the training samples are that split."""
    paths: tuple[str, ...] | None = None
    """Each training sample's image file, for datasets read from files."""
    ids: tuple[str, ...] | None = None
    """Each training sample's id, for tables (``data.dataset=table``): reports name rows
    by it, and ``data.exclude`` / ``data.relabel`` may list ids."""
    feature_names: tuple[str, ...] | None = None
    """For tables: the name of each feature, in the order the model takes them."""
    noise_known: bool = False
    """The labels were corrupted synthetically, so ``true_labels`` and ``corrupted`` are
    the truth; otherwise they only repeat the given labels."""
    val_images: torch.Tensor | None = None
    """The validation split (``data.val_size``): held out of the training set after the
    corruption, never trained on; None when there is none."""
    val_labels: torch.Tensor | None = None
    """Its observed labels, noisy like the training labels: all a user would have."""
    val_index: torch.Tensor | None = None
    """Each validation sample's index in the dataset's training split."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.train_labels, minlength=self.num_classes)

    @property
    def train_index(self) -> torch.Tensor:
        """Each training sample's index in the dataset's training split."""
        if self.source_index is None:
            return torch.arange(len(self.train_labels))
        return self.source_index
