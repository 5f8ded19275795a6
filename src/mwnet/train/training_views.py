"""Fresh augmented views of training samples by position, for methods that augment a batch
more than once (see :data:`mwnet.methods.descriptor.TrainingViews`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mwnet.data import Augment, Normalize, gather_augmented, to_float


@dataclass
class AugmentedViews:
    """The training images (on the device, the training batches' own copy) with the
    batches' augmentation and normalisation: ``views(index, seed)`` is what a training
    batch of those samples looks like, drawn from its own generator seeded with ``seed``
    (so the batches' generator, and with it a resumed run, is untouched)."""

    images: torch.Tensor
    augment: Augment | None
    normalize: Normalize | None

    def __call__(self, index: torch.Tensor, seed: int) -> torch.Tensor:
        device = self.images.device
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
        batch = gather_augmented(self.images, index.to(device), self.augment, generator)
        return to_float(batch, self.normalize)
