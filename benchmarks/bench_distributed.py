"""Data-parallel MW-Net: bytes all-reduced per step by category, and steps/s on 1 vs W ranks.

Each setting trains the same model with the same global batches (random Fashion-MNIST-
shaped data, 1x28x28, 10 classes) with ``MetaReweighter``: one process on the whole
batches, then W processes (gloo, file store, this machine) on their shards, each with
``--threads`` CPU threads. The byte counts are what each rank contributes to its
all-reduces (the payload; a ring all-reduce moves about 2(W-1)/W times that over each
rank's link). The training loop adds an all-gather of two values per sample for its
records (per-sample losses and weights), counted here as ``logging``.

    PYTHONPATH=src python benchmarks/bench_distributed.py --model cnn_small --ranks 1,2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mwnet import MetaReweighter, WeightNet
from mwnet.core.reducer import GradientReducer
from mwnet.models import build

CATEGORIES = ("normaliser", "virtual_grad", "meta_grad", "weight_net_grad", "real_grad", "logging")


def _batches(args: argparse.Namespace, count: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    shape = (1, 28, 28)
    return [
        (
            torch.randn(args.batch, *shape, generator=g),
            torch.randint(0, 10, (args.batch,), generator=g),
            torch.randn(args.meta_batch, *shape, generator=g),
            torch.randint(0, 10, (args.meta_batch,), generator=g),
        )
        for _ in range(count)
    ]


def _train(rank: int, world: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    reducer = None
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{out}/store",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=300),
        )
        reducer = GradientReducer()
    torch.manual_seed(0)
    model = build(args.model, num_classes=10, in_channels=1, image_size=28)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rw = MetaReweighter(model, optimizer, WeightNet(), hypergrad=args.hypergrad, reducer=reducer)

    def shard(t: torch.Tensor) -> torch.Tensor:
        return t.tensor_split(world)[rank]

    def gather_records(losses: torch.Tensor, weights: torch.Tensor) -> None:
        if reducer is None:
            return
        both = torch.stack([losses, weights], 1)
        parts = [torch.empty_like(both) for _ in range(world)]
        reducer.counter.add("logging", both)
        dist.all_gather(parts, both)

    batches = _batches(args, args.warmup + args.steps)
    seconds = 0.0
    for i, (x, y, xm, ym) in enumerate(batches):
        if i == args.warmup:
            if reducer is not None:
                reducer.counter.reset()
                dist.barrier()
            start = time.perf_counter()
        result = rw.step(shard(x), shard(y), shard(xm), shard(ym))
        gather_records(result.losses, result.weights)
    if reducer is not None:
        dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        counts = {} if reducer is None else dict(reducer.counter.bytes)
        record = {
            "ranks": world,
            "steps_per_s": args.steps / seconds,
            "bytes_per_step": {c: counts.get(c, 0) / args.steps for c in CATEGORIES},
            "params": sum(p.numel() for p in model.parameters()),
        }
        Path(out, "result.json").write_text(json.dumps(record))
    if reducer is not None:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict:
    """One setting in fresh processes (world == 1: a single process, no process group)."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_train, args=(world, args, out), nprocs=world, start_method="spawn")
        return json.loads(Path(out, "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn_small", help="cnn_small | mlp | ...")
    parser.add_argument("--hypergrad", default="fast", choices=("fast", "reverse", "head"))
    parser.add_argument("--ranks", default="1,2", help="comma list of process counts")
    parser.add_argument("--batch", type=int, default=100, help="global training batch")
    parser.add_argument("--meta-batch", type=int, default=100, help="global meta batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{args.model}, hypergrad={args.hypergrad}, global batch {args.batch}+{args.meta_batch}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = [run(int(w), args) for w in args.ranks.split(",")]
    print(f"parameters: {rows[0]['params']}")
    header = f"{'ranks':>5} {'steps/s':>8}  " + " ".join(f"{c:>15}" for c in CATEGORIES)
    print(header + f" {'total B/step':>13}")
    for r in rows:
        b = r["bytes_per_step"]
        cells = " ".join(f"{b[c]:>15,.0f}" for c in CATEGORIES)
        print(f"{r['ranks']:>5} {r['steps_per_s']:>8.2f}  {cells} {sum(b.values()):>13,.0f}")


if __name__ == "__main__":
    main()
