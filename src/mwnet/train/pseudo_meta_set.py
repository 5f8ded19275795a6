"""Training without a clean set: each epoch, a pseudo-meta set picked from the training set.

With ``data.meta_source=auto`` no trusted data exists. After the warm-up, at the start of
every epoch, a scorer (the EMA teacher by default, or the model) rates every training
sample by its loss on the observed label, and the ``data.pseudo_meta_per_class`` lowest of
each observed class become the meta set, with their observed labels (CMW-Net-SL). Scoring
the whole training set is sharded over the ranks of a data-parallel job.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn

from mwnet.data import Augment, EndlessBatches, Normalize
from mwnet.distributed import DataParallel
from mwnet.train.evaluate import predict


class PseudoMetaStream:
    """Endless meta batches from the current pseudo-meta set, replaced every epoch.

    Its batches are drawn with a generator seeded by (run seed, epoch), so a resumed run,
    which picks the same set again at the start of the epoch, draws the same batches: no
    state of its own needs saving.
    """

    def __init__(
        self,
        batch_size: int,
        device: torch.device,
        augment: Augment | None,
        normalize: Normalize | None,
        seed: int,
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.augment = augment
        self.normalize = normalize
        self.seed = seed
        self.batches: EndlessBatches | None = None

    def replace(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        self.batches = EndlessBatches(
            images,
            labels,
            self.batch_size,
            self.device,
            shuffle=True,
            augment=self.augment,
            normalize=self.normalize,
            seed=zlib.crc32(f"{self.seed}/pseudo-meta/{epoch}".encode()),
        )

    def __iter__(self) -> PseudoMetaStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self.batches is None:
            raise RuntimeError(
                "no pseudo-meta set yet: with data.meta_source=auto it is picked at the start "
                "of every epoch after the warm-up; the method asked for a meta batch before"
            )
        return next(self.batches)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def score_training_set(
    scorer: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize | None,
    device: torch.device,
    batch_size: int,
    parallel: DataParallel | None = None,
) -> torch.Tensor:
    """Every sample's cross-entropy on ``labels`` under ``scorer`` in eval mode (CPU).

    Under data parallelism each rank scores its contiguous shard and one all-gather puts
    the scores of the whole set on every rank.
    """
    return predict(scorer, images, labels, normalize, device, batch_size, parallel)[1]
