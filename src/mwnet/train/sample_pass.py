"""Per-sample passes over a run's training or trusted set, handed to the methods that look
at every sample between epochs (see :class:`mwnet.methods.SamplePass`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mwnet.data import Normalize
from mwnet.distributed import DataParallel
from mwnet.methods.descriptor import Reduction
from mwnet.train.evaluate import per_sample


@dataclass
class DatasetPass:
    """One fixed set of samples, run through a model in eval mode without augmentation;
    sharded over the ranks of a data-parallel job, gathered on every rank."""

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Normalize | None
    device: torch.device
    batch_size: int
    parallel: DataParallel | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __call__(self, model: nn.Module, reduce: Reduction) -> torch.Tensor:
        return per_sample(
            model,
            self.images,
            self.labels,
            self.normalize,
            self.device,
            self.batch_size,
            reduce,
            parallel=self.parallel,
        )

    def subset(self, indices: torch.Tensor) -> DatasetPass:
        indices = torch.as_tensor(indices, dtype=torch.long)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])
