"""Throughput of mwnet's on-device batching vs a per-sample DataLoader pipeline.

Both produce the same training batches: reflect-pad 4, random 32x32 crop, horizontal
flip, CIFAR normalisation, float32. ``DeviceBatches`` does it as one gather per batch on
the device; the baseline is the usual ``torch.utils.data.DataLoader`` with a per-image
transform written with torch ops (no torchvision). Both run in this one process on
synthetic uint8 data, so the numbers measure the input pipeline alone.

    PYTHONPATH=src python benchmarks/bench_loader.py --images 10000 --batch-size 128
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mwnet.data import CIFAR_AUGMENT, CIFAR_NORMALIZE, DeviceBatches


class PerSampleAugmented(Dataset):
    """The baseline: one image at a time, as a torchvision-style transform would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int = 4) -> None:
        self.images, self.labels, self.padding = images, labels, padding
        self.mean = torch.tensor(CIFAR_NORMALIZE.mean).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_NORMALIZE.std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.padding
        img = self.images[i].float()
        _, h, w = img.shape
        img = F.pad(img[None], (p, p, p, p), mode="reflect")[0]
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = img[:, dy : dy + h, dx : dx + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        img = (img / 255 - self.mean) / self.std
        return img, self.labels[i]


def _consume(batches: Iterable, device: torch.device) -> int:
    seen = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        seen += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen


def _throughput(make_epoch, device: torch.device, epochs: int) -> float:
    _consume(make_epoch(), device)  # warm-up epoch
    start = time.perf_counter()
    seen = sum(_consume(make_epoch(), device) for _ in range(epochs))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)

    device_batches = DeviceBatches(
        images, labels, args.batch_size, device, augment=CIFAR_AUGMENT, normalize=CIFAR_NORMALIZE
    )
    loader = DataLoader(
        PerSampleAugmented(images, labels),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    fast = _throughput(lambda: iter(device_batches), device, args.epochs)
    slow = _throughput(lambda: iter(loader), device, args.epochs)

    print(
        f"{args.images} images 3x32x32, batch {args.batch_size}, device {device}, "
        f"{torch.get_num_threads()} threads, {args.workers} DataLoader workers, "
        f"{args.epochs} timed epochs"
    )
    print(f"{'pipeline':<40} {'images/s':>12} {'ratio':>8}")
    print(f"{'DeviceBatches (batched gather)':<40} {fast:>12,.0f} {fast / slow:>7.1f}x")
    print(f"{'DataLoader (per-sample transform)':<40} {slow:>12,.0f} {1.0:>7.1f}x")


if __name__ == "__main__":
    main()
