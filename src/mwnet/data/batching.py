"""Batches and augmentation on the training device, from a ``uint8`` dataset in memory.

The whole dataset is copied to the device once as ``uint8``. A batch is then an
``index_select`` of its samples and one ``gather`` that applies a random pad-crop and
horizontal flip to all of them (reflect or zero padding is resolved in the gather
indices, so no padded copy is built), followed by normalisation. No worker processes,
no Python loop over samples: the airbench approach to small-image input pipelines.

Randomness (batch order and augmentation) comes from one ``torch.Generator`` per
iterator, so a seed fixes the sequence, and ``state_dict()`` / ``load_state_dict()``
resume a run mid-epoch with exactly the batches it would have produced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mwnet.data.dataset import is_features
from mwnet.data.errors import DataError

Batch = tuple[torch.Tensor, ...]
PAD_MODES = ("reflect", "zero")


@dataclass(frozen=True)
class Normalize:
    """Per-channel ``(x - mean) / std`` with ``x`` in ``[0, 1]`` units for ``uint8``
    images, in the features' own units for table rows (one channel per feature)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise DataError(f"mean and std need one entry per channel, got {self}")
        if any(not s > 0 for s in self.std):
            raise DataError(f"std must be positive, got {self.std}")

    @classmethod
    def from_images(cls, images: torch.Tensor) -> Normalize:
        """Per-channel mean and std of a ``uint8`` ``(N, C, H, W)`` dataset, or per feature
        of table rows (``float32`` ``(N, D, 1, 1)``), in float64.

        A feature that is constant over the training rows has no spread to divide by; its
        std is taken as 1, so it is only centred (it carries nothing the model could use).
        """
        x = images.double()
        if not is_features(images):
            x = x.div_(255)
        x = x.transpose(0, 1).reshape(images.shape[1], -1)
        std = x.std(1) if x.shape[1] > 1 else torch.zeros(x.shape[0], dtype=x.dtype)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(tuple(x.mean(1).tolist()), tuple(std.tolist()))


@dataclass(frozen=True)
class Augment:
    """Random pad-and-crop back to the input size, and optional horizontal flip.

    Attributes:
        padding: pixels added on each side before the random crop (0 disables it).
        pad_mode: ``"reflect"`` (mirror without repeating the edge) or ``"zero"``
            (black pixels, before normalisation).
        flip: flip each image horizontally with probability 1/2.
    """

    padding: int = 4
    pad_mode: str = "reflect"
    flip: bool = True

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise DataError(f"padding must be >= 0, got {self.padding}")
        if self.pad_mode not in PAD_MODES:
            raise DataError(f"unknown pad_mode {self.pad_mode!r}; expected one of {PAD_MODES}")


CIFAR_NORMALIZE = Normalize(
    mean=(125.3 / 255, 123.0 / 255, 113.9 / 255), std=(63.0 / 255, 62.1 / 255, 66.7 / 255)
)
CIFAR_AUGMENT = Augment(padding=4, pad_mode="reflect", flip=True)


def _source_coords(
    offset: torch.Tensor, size: int, reverse: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map output positions to source positions for a shifted (and maybe flipped) crop.

    Returns ``(coords, valid)``: ``coords`` ``(B, size)`` always in range, ``valid`` the
    mask of positions inside the image for zero padding (None for reflect).
    """
    base = torch.arange(size, device=offset.device)
    pos = base.expand(offset.shape[0], size)
    if reverse is not None:
        pos = torch.where(reverse[:, None], size - 1 - base, base)
    coords = offset[:, None] + pos
    if mode == "reflect":
        coords = coords.abs()
        coords = torch.where(coords > size - 1, 2 * (size - 1) - coords, coords)
        return coords, None
    valid = (coords >= 0) & (coords < size)
    return coords.clamp(0, size - 1), valid


def gather_augmented(
    images: torch.Tensor,
    indices: torch.Tensor,
    augment: Augment | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``images[indices]`` with a random pad-crop and flip per sample.

    The samples are selected with one ``index_select``; the shifted, possibly mirrored
    crop is then a single ``gather`` over the flattened pixels, with padding resolved in
    the index map rather than by building a padded copy. On CPU this is several times
    faster than one 4-d advanced-indexing expression.

    Args:
        images: ``uint8`` ``(N, C, H, W)`` on the device.
        indices: ``int64`` ``(B,)`` on the same device.
        augment: the augmentation, or None for plain ``images[indices]``.
        generator: the source of randomness (on the same device).
    """
    batch = images.index_select(0, indices)
    if augment is None or (augment.padding == 0 and not augment.flip):
        return batch
    b, c, h, w = batch.shape
    dev, p = images.device, augment.padding
    if augment.pad_mode == "reflect" and p > min(h, w) - 1:
        raise DataError(f"reflect padding {p} must be smaller than the image size {h}x{w}")
    if p:
        shift = torch.randint(-p, p + 1, (2, b), generator=generator, device=dev)
    else:
        shift = torch.zeros((2, b), dtype=torch.int64, device=dev)
    flip = None
    if augment.flip:
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
    rows, row_ok = _source_coords(shift[0], h, None, augment.pad_mode)
    cols, col_ok = _source_coords(shift[1], w, flip, augment.pad_mode)
    pixel = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w)
    out = batch.reshape(b, c, h * w).gather(2, pixel.expand(b, c, h * w)).view(b, c, h, w)
    if row_ok is not None and col_ok is not None:
        out = out * (row_ok[:, None, :, None] & col_ok[:, None, None, :])
    return out


def to_float(batch: torch.Tensor, normalize: Normalize | None) -> torch.Tensor:
    """``uint8`` -> ``float32`` in ``[0, 1]``, then normalised; in place after the cast.

    Table rows (``float32`` ``(N, D, 1, 1)``) are already numbers in their own units: they
    are only normalised (a copy, never the stored rows)."""
    scale = 1.0 if is_features(batch) else 255.0
    x = batch.float() if scale == 255.0 else batch.clone()
    if normalize is None:
        return x if scale == 1.0 else x.mul_(1 / 255)
    if len(normalize.mean) != batch.shape[1]:
        raise DataError(
            f"normalize has {len(normalize.mean)} channels, images have {batch.shape[1]}"
        )
    std = torch.tensor(normalize.std, device=x.device).view(1, -1, 1, 1)
    mean = torch.tensor(normalize.mean, device=x.device).view(1, -1, 1, 1)
    return x.mul_(1 / (scale * std)).sub_(mean / std)


class _OnDevice:
    """The dataset on the device plus the generator and the batch recipe."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        batch_size: int,
        device: torch.device | str,
        shuffle: bool,
        augment: Augment | None,
        normalize: Normalize | None,
        seed: int,
        indices_too: bool,
    ) -> None:
        if (
            not isinstance(images, torch.Tensor)
            or images.dim() != 4
            or not (images.dtype == torch.uint8 or is_features(images))
        ):
            raise DataError(
                "images must be a uint8 tensor of shape (N, C, H, W), or float32 table rows "
                "(N, D, 1, 1)"
            )
        if augment is not None and is_features(images):
            raise DataError("table rows are not augmented: pass augment=None")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex():
            raise DataError(f"labels must be integers, got {labels.dtype}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if normalize is not None and len(normalize.mean) != images.shape[1]:
            raise DataError(
                f"normalize has {len(normalize.mean)} channels, images have {images.shape[1]}"
            )
        reflect = augment is not None and augment.pad_mode == "reflect"
        if reflect and augment.padding > min(images.shape[2:]) - 1:
            raise DataError(
                f"reflect padding {augment.padding} must be smaller than the image size"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.normalize = normalize
        self.seed = seed
        self.indices_too = indices_too
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.num_samples = int(images.shape[0])

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=self.generator, device=self.device)
        return torch.arange(self.num_samples, device=self.device)

    def _batch(self, idx: torch.Tensor) -> Batch:
        x = to_float(
            gather_augmented(self.images, idx, self.augment, self.generator), self.normalize
        )
        y = self.labels.index_select(0, idx)
        return (x, y, idx) if self.indices_too else (x, y)

    def _state(self, counter: str, count: int, position: int, order: torch.Tensor | None) -> dict:
        return {
            counter: count,
            "position": position,
            "order": None if order is None else order.cpu().clone(),
            "generator": self.generator.get_state().clone(),
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
        }

    def _load_common(self, state: dict[str, Any]) -> None:
        for key in ("num_samples", "batch_size"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"state was saved with {key}={state[key]}, this iterator has "
                    f"{getattr(self, key)}"
                )
        self.generator.set_state(state["generator"].cpu())


class DeviceBatches(_OnDevice):
    """Epochs of ``(x, y)`` (or ``(x, y, idx)``) batches made on ``device``.

    ``x`` is ``float32`` ``(B, C, H, W)`` normalised, ``y`` ``int64``; with
    ``indices_too`` the dataset indices of the batch come third, to attribute
    per-sample weights back to samples.

    Each ``iter()`` runs to the end of the current epoch. Stopping early and iterating
    again continues the same epoch where it stopped, which is also what happens after
    ``load_state_dict``. Use one iterator at a time.

    Args:
        images: ``uint8`` ``(N, C, H, W)``; copied to ``device`` once.
        labels: ``(N,)`` integer labels.
        batch_size: samples per batch.
        device: where batches are built and returned.
        shuffle: new random order each epoch (otherwise dataset order).
        drop_last: drop the final incomplete batch of each epoch.
        augment: random pad-crop / flip, or None.
        seed: seeds the generator for order and augmentation.
        indices_too: also yield the sample indices.
        normalize: per-channel normalisation; None only scales to ``[0, 1]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        batch_size: int,
        device: torch.device | str,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        indices_too: bool = False,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(
            images, labels, batch_size, device, shuffle, augment, normalize, seed, indices_too
        )
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._current: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        end = len(self) * self.batch_size if self.drop_last else self.num_samples
        if end == 0:
            return
        if self._current is None:
            self._current = self._order()
        order = self._current
        while True:
            start = self.position
            stop = min(start + self.batch_size, end)
            batch = self._batch(order[start:stop])
            done = stop >= end
            if done:
                self.epoch, self.position, self._current = self.epoch + 1, 0, None
            else:
                self.position = stop
            yield batch
            if done:
                return

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position in the epoch, the epoch's order and the generator state."""
        return self._state("epoch", self.epoch, self.position, self._current)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the next batches are the ones that would have come."""
        self._load_common(state)
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        order = state["order"]
        self._current = None if order is None else order.to(self.device)


class EndlessBatches(_OnDevice):
    """An infinite stream of full batches, reshuffled on every pass: for the meta set.

    The meta set is usually small (100 to 1000 images) and is drawn from once per
    training step, so batches run across pass boundaries: every batch has exactly
    ``batch_size`` samples even when the set is not a multiple of it (or smaller).
    Arguments as for :class:`DeviceBatches`; ``passes`` counts completed passes.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        batch_size: int,
        device: torch.device | str,
        shuffle: bool = True,
        augment: Augment | None = None,
        seed: int = 0,
        indices_too: bool = False,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__(
            images, labels, batch_size, device, shuffle, augment, normalize, seed, indices_too
        )
        if self.num_samples == 0:
            raise DataError("EndlessBatches needs at least one sample")
        self.passes = 0
        self.position = 0
        self._current: torch.Tensor | None = None

    def __iter__(self) -> EndlessBatches:
        return self

    def __next__(self) -> Batch:
        parts, need = [], self.batch_size
        while need:
            if self._current is None:
                self._current = self._order()
            take = self._current[self.position : self.position + need]
            parts.append(take)
            need -= take.shape[0]
            self.position += take.shape[0]
            if self.position == self.num_samples:
                self.passes += 1
                self.position = 0
                self._current = None
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._batch(idx)

    def state_dict(self) -> dict[str, Any]:
        """Completed passes, position in the pass, the pass's order and generator state."""
        return self._state("passes", self.passes, self.position, self._current)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the stream continues exactly where it was saved."""
        self._load_common(state)
        self.passes = int(state["passes"])
        self.position = int(state["position"])
        order = state["order"]
        self._current = None if order is None else order.to(self.device)
