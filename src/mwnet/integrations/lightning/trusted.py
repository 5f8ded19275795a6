"""The trusted (meta) batches of a Lightning run: an endless stream over a DataLoader whose
position a checkpoint saves, and the loader's share for each DDP process.

Meta-Weight-Net draws one trusted batch per weighting-net update, independently of the
training epochs, so the stream cycles over the trusted loader in passes. Two things make
a resumed run draw what an uninterrupted one draws: the position is kept as (pass, batches
drawn in it), and each pass is opened with ``sampler.set_epoch(pass)`` when the sampler
has it (a ``DistributedSampler`` then shuffles the same way in every run and on every
process). A loader whose order comes from the global RNG (``shuffle=True`` in one process)
resumes at the right position but in another order, as Lightning's own training loader
does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

Unpack = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


def inputs_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The default way to read a batch: ``(inputs, labels, ...)``; anything after the
    first two entries (sample indices, say) is left alone."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"MetaWeighting reads a batch as (inputs, labels, ...), got {type(batch).__name__}; "
        "pass unpack=lambda batch: (inputs, labels) to read yours"
    )


def shard_for_ranks(loader: Iterable, rank: int, world: int) -> Iterable:
    """This process's share of ``loader`` under data parallelism, as Lightning gives each
    process its share of the training loader: a ``DistributedSampler`` over the dataset
    (shuffled if the loader shuffled), the loader's batch size per process.

    A loader that already has a ``DistributedSampler`` is used as it is. Only a plain
    ``DataLoader`` with a sequential or random sampler can be rebuilt; anything else must
    come sharded, since two processes drawing the same trusted samples would count them
    twice in the meta gradient.
    """
    if world == 1:
        return loader
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        return loader
    plain = (
        type(loader) is DataLoader
        and type(loader.sampler) in (SequentialSampler, RandomSampler)
        and loader.batch_size is not None
    )
    if not plain:
        raise ValueError(
            f"under {world} processes every process needs its own share of the trusted "
            f"batches, and a {type(loader).__name__} with sampler "
            f"{type(getattr(loader, 'sampler', None)).__name__} cannot be split here; give "
            "the trusted DataLoader a torch.utils.data.DistributedSampler"
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
    )


class TrustedBatches(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Endless ``(inputs, labels)`` batches from passes over ``loader``, each moved to the
    model's device by ``to_device`` and read by ``unpack``.

    :meth:`state_dict` is the position (pass, batches drawn in it); :meth:`load_state_dict`
    makes the next batch the one an uninterrupted stream would draw next, by opening that
    pass again and skipping what was drawn of it.
    """

    def __init__(
        self,
        loader: Iterable,
        to_device: Callable[[Any], Any] = lambda batch: batch,
        unpack: Unpack = inputs_and_labels,
    ) -> None:
        self.loader = loader
        self.to_device = to_device
        self.unpack = unpack
        self.passes = 0
        """Passes begun before the current one."""
        self.drawn = 0
        """Batches drawn from the current pass."""
        self._batches: Iterator | None = None

    def _open(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.passes)
        self._batches = iter(self.loader)

    def _skip(self, count: int) -> None:
        for done in range(count):
            if next(self._batches, None) is None:
                raise ValueError(
                    f"the trusted loader gave {done} batches in pass {self.passes}, but the "
                    f"checkpoint had drawn {count} of that pass: it is not the loader of the "
                    "run that was saved"
                )

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:  # first draw, or the first after a restore
            self._open()
            self._skip(self.drawn)
        batch = next(self._batches, None)
        if batch is None:  # a pass ended: the next one
            if self.drawn == 0:
                raise ValueError("the trusted loader is empty: it must yield at least one batch")
            self.passes, self.drawn = self.passes + 1, 0
            self._open()
            batch = next(self._batches, None)
            if batch is None:
                raise ValueError("the trusted loader gave no batch in a new pass")
        self.drawn += 1
        return self.unpack(self.to_device(batch))

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes, self.drawn = int(state["passes"]), int(state["drawn"])
        self._batches = None
