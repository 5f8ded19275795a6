"""Training runs on W spawned ranks: the equivalence tests' (also run once in one process)
and the real training loop's (:func:`run_loop_on_ranks`).

The functions here run in processes started with the ``spawn`` method, so they live in a
module of their own (importable by name in the children), not in a test file.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mwnet
from mwnet import ClassAwareWeightNet, MetaReweighter, WeightNet, start_flat
from mwnet.core.famus import LayerSampling
from mwnet.core.reducer import GradientReducer
from mwnet.distributed import DataParallel
from mwnet.methods import L2RW, CrossEntropy
from mwnet.train import loop
from mwnet.train.config import load_config

STEPS = 3
CLASSES = 4
FEATURES = 6
TRAINING_SET = 150
"""Positions the batches' samples are drawn from: three batches of 100 revisit samples, so
the per-sample averages and loss sequences a weighting net may read hold earlier visits."""


@dataclass(frozen=True)
class Case:
    """One training setting: a method and its options, ``batch`` samples per step."""

    name: str
    method: str = "mwnet"
    hypergrad: str = "fast"
    normalize: str = "sum"
    virtual_step: str = "sgd"
    meta_interval: int = 1
    class_aware: bool = False
    frozen: bool = False
    flat: bool = False
    """Start the weighting net flat (:func:`mwnet.start_flat`)."""
    partial: str | None = None
    """hypergrad="partial" only: the top (module names)."""
    famus: LayerSampling | None = None
    """hypergrad="famus" only: which layers carry the meta gradient."""
    batch: int = 100
    meta_batch: int = 100
    inputs: tuple[str, ...] = ("loss",)
    """What the weighting net reads about each sample (method.mwnet.inputs)."""
    history: int = 3
    """K, the visits of the input loss_history (method.mwnet.history)."""
    gate: str = "none"


class Mlp(nn.Module):
    """Without BatchNorm, so that W shards compute exactly what one batch computes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh())
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _batches(case: Case) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    positions = torch.Generator().manual_seed(2)  # its own stream: the data stay as they were
    out = []
    for _ in range(STEPS):
        y = torch.randint(0, CLASSES, (case.batch,), generator=g)
        x = torch.randn(case.batch, FEATURES, generator=g, dtype=torch.float64)
        x[torch.arange(case.batch), y] += 1.5  # learnable, so losses differ between samples
        ym = torch.randint(0, CLASSES, (case.meta_batch,), generator=g)
        xm = torch.randn(case.meta_batch, FEATURES, generator=g, dtype=torch.float64)
        xm[torch.arange(case.meta_batch), ym] += 1.5
        index = torch.randperm(TRAINING_SET, generator=positions)[: case.batch]
        out.append((x, y, xm, ym, index))
    return out


def train(
    case: Case,
    reducer: GradientReducer | None,
    order_seed: int | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """``STEPS`` steps of ``case``; with a reducer, on this rank's shards of the batches.

    ``order_seed`` (one process only) shuffles the samples within every batch and meta
    batch: in exact arithmetic nothing changes (every sum over samples is the same sum), so
    the run differs from the unshuffled one only in the order of its floating-point sums.
    The per-sample weights are returned in the unshuffled order. ``device``: where the
    model, the weighting net and the batches live (the data are drawn on the CPU, so every
    device trains on the same numbers; the sample positions stay on the CPU, so a weighting
    net that reads per-sample averages needs the CPU). The results stay on ``device``.
    """
    if order_seed is not None and reducer is not None:
        raise ValueError("order_seed shuffles one process's batches; ranks keep their shards")
    rank, world = (0, 1) if reducer is None else (reducer.rank, reducer.world_size)
    shuffle = None if order_seed is None else torch.Generator().manual_seed(order_seed)

    def take(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's samples of a batch, and their places in it."""
        if shuffle is not None:
            places = torch.randperm(len(y), generator=shuffle)
        else:
            places = torch.arange(len(y)).tensor_split(world)[rank]
        return x[places].to(device), y[places].to(device), places

    torch.manual_seed(0)
    model = Mlp().double().to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    batches = _batches(case)
    shards = [(take(x, y), take(xm, ym), index) for x, y, xm, ym, index in batches]
    meta = iter([(xm, ym) for _, (xm, ym, _), _ in shards])
    weight_net = None
    if case.method == "mwnet":
        inputs = {"inputs": case.inputs, "history": case.history}
        weight_net = (
            ClassAwareWeightNet([300, 200, 50, 10], hidden=100, **inputs)
            if case.class_aware
            else WeightNet(num_classes=CLASSES, **inputs)
        ).double().to(device)
        if case.flat:
            start_flat(weight_net)
        method = MetaReweighter(
            model,
            optimizer,
            weight_net,
            None
            if case.frozen
            else torch.optim.Adam(weight_net.parameters(), lr=0.05, weight_decay=1e-4),
            frozen=case.frozen,
            normalize=case.normalize,  # type: ignore[arg-type]
            virtual_step=case.virtual_step,  # type: ignore[arg-type]
            hypergrad=case.hypergrad,  # type: ignore[arg-type]
            partial=case.partial,
            famus=case.famus,
            meta_interval=case.meta_interval,
            reducer=reducer,
            num_samples=TRAINING_SET,
            gate=case.gate,  # type: ignore[arg-type]
        )
    elif case.method == "l2rw":
        method = L2RW(model, optimizer, meta, hypergrad=case.hypergrad, reducer=reducer)  # type: ignore[arg-type]
    else:
        method = CrossEntropy(model, optimizer, reducer=reducer)
    losses, meta_losses, weights, kept = [], [], [], []
    for (x, y, places), (xm, ym, _), index in shards:
        if case.hypergrad == "famus":
            kept.append(method.famus_parameters())
        if case.method == "mwnet":
            out = method.step(x, y, xm, ym, index[places])
            applied = out.coefficients
        else:
            out = method.step(x, y)
            applied = out.weights
        if applied is not None and shuffle is not None:
            applied = torch.empty_like(applied).index_copy_(0, places.to(device), applied)
        weights.append(applied)
        losses.append(out.loss)
        meta_losses.append(out.meta_loss)
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "weight_net": None if weight_net is None else weight_net.state_dict(),
        "dynamics": _dynamics(method),
        "loss": losses,
        "meta_loss": meta_losses,
        "weights": weights,
        "famus_kept": kept,
        "bytes": {} if reducer is None else dict(reducer.counter.bytes),
    }


def _dynamics(method) -> dict[str, torch.Tensor] | None:
    """The table of per-sample averages a weighting net reads, if it reads some."""
    inputs = getattr(method, "inputs", None)
    if inputs is None or inputs.table is None:
        return None
    return {"table": inputs.table.clone(), "seen": inputs.seen.clone()}


def join_gloo(rank: int, world: int, store: str) -> None:
    """One thread, and this spawned process joined to the others by gloo (file store)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )


def run_rank(rank: int, world: int, store: str, cases: list[Case], out_dir: str) -> None:
    """The body of one spawned rank: every case in order, results saved to a file."""
    join_gloo(rank, world, store)
    try:
        results = {case.name: train(case, GradientReducer()) for case in cases}
        dist.barrier()  # no rank leaves while a peer still receives its last rows
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def run_on_ranks(cases: list[Case], world: int, tmp: Path, timeout: float = 120) -> list[dict]:
    """Run ``cases`` on ``world`` spawned ranks (gloo, file store); results per rank."""
    return _spawn(run_rank, (cases,), world, tmp, timeout)


def _spawn(target, args: tuple, world: int, tmp: Path, timeout: float) -> list[dict]:
    """``target(rank, world, store, *args, out_dir)`` on ``world`` spawned processes; the
    results each saved to ``out_dir/rank{rank}.pt``."""
    tmp.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        target,
        args=(world, str(tmp / "store"), *args, str(tmp)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} ranks did not finish within {timeout} s")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world)]


def _model_state(trainer: loop.Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.exp.model.state_dict().items()}


def run_loop_rank(
    rank: int, world: int, store: str, preset: str, overrides: list[str], out_dir: str
) -> None:
    """One spawned rank of the real training loop (:mod:`mwnet.train.loop`) on gloo.

    Trains run ``straight`` to its end; run ``cut`` for its first epoch only, whose
    checkpoint rank 0 then copies to ``checkpoint-1.pt``; then resumes ``cut`` with a new
    trainer, as ``mwnet train --resume`` does, to its end. Keeps each rank's model at
    every start and end. ``overrides`` name no run.
    """
    join_gloo(rank, world, store)
    parallel = DataParallel(rank, world, 0, torch.device("cpu"), "gloo", GradientReducer())
    results: dict[str, object] = {}
    try:
        for name, stop in (("straight", None), ("cut", 1)):
            cfg = load_config(preset, [*overrides, f"name={name}"])
            trainer, run_dir = loop.start(cfg, quiet=True, parallel=parallel)
            results[f"{name}_start"] = _model_state(trainer)
            trainer.fit(stop_after=stop)  # ends with a barrier: rank 0 has written
            results[f"{name}_end"] = _model_state(trainer)
        if rank == 0:
            shutil.copyfile(run_dir / loop.CHECKPOINT, run_dir / "checkpoint-1.pt")
        parallel.barrier()
        del trainer
        resumed = loop.resume(run_dir, quiet=True, parallel=parallel)
        results["resumed_after"] = resumed.epoch
        resumed.fit()
        results["resumed_end"] = _model_state(resumed)
    finally:
        parallel.close()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def run_loop_on_ranks(
    preset: str, overrides: list[str], world: int, tmp: Path, timeout: float = 120
) -> list[dict]:
    """:func:`run_loop_rank` on ``world`` spawned ranks; its results per rank."""
    return _spawn(run_loop_rank, (preset, overrides), world, tmp, timeout)


def run_method_rank(rank: int, world: int, store: str, overrides: list[str], out_dir: str) -> None:
    """One spawned rank of the training loop on gloo: the run of ``overrides`` (a config
    without preset) to its end; keeps this rank's model and method state."""
    join_gloo(rank, world, store)
    parallel = DataParallel(rank, world, 0, torch.device("cpu"), "gloo", GradientReducer())
    try:
        trainer, _ = loop.start(load_config(None, overrides), quiet=True, parallel=parallel)
        trainer.fit()
        results = {"model": _model_state(trainer), "method": trainer.exp.method.state_dict()}
    finally:
        parallel.close()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def train_method_on_ranks(
    overrides: list[str], world: int, tmp: Path, timeout: float = 120
) -> list[dict]:
    """:func:`run_method_rank` on ``world`` spawned ranks; each rank's model and method
    state at the end."""
    return _spawn(run_method_rank, (overrides,), world, tmp, timeout)


def source_env() -> dict[str, str]:
    """The environment for subprocesses: the ``mwnet`` imported here comes first on the path."""
    src = str(Path(mwnet.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def torchrun(ranks: int, args: list[str], env: dict[str, str], timeout: float):
    """``python -m torch.distributed.run --standalone --nproc_per_node=ranks -m mwnet ...``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={ranks}", "-m", "mwnet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def rank_failure(stderr: str) -> str:
    """What a failed torchrun printed, for an assertion message: the ranks' own lines (where
    the cause is, e.g. an abort's message) before torchrun's summary of the failure."""
    lines = [
        line
        for line in stderr.splitlines()
        if "torch/distributed/elastic" not in line and not line.startswith(("  File", "    "))
    ]
    return "\n".join(lines[:40]) + "\n...\n" + stderr[-1500:]


def train_on_two_ranks_and_one(args: list[str], out: Path, timeout: float = 180) -> None:
    """``mwnet ARGS`` under torchrun on 2 ranks (run ``out/two``), then in this process
    (``out/one``): the two run directories an equivalence test compares."""
    from mwnet.cli import main

    two = torchrun(2, [*args, "name=two"], source_env(), timeout)
    assert two.returncode == 0, rank_failure(two.stderr)
    assert main([*args, "name=one"]) == 0
    assert (out / "one").is_dir() and (out / "two").is_dir()


def rerun_on_two_threads(args: list[str], name: str = "one-2-threads") -> None:
    """``mwnet ARGS`` (which say ``threads=1``) again in this process on 2 threads, as run
    ``name``: nothing changes but the blocking of its sums, so its distance from the
    1-thread run is this CPU's rounding spread, the bound of a rank-equivalence test."""
    from mwnet.cli import main

    two_threads = [a if a != "threads=1" else "threads=2" for a in args]
    threads = torch.get_num_threads()
    try:
        assert main([*two_threads, f"name={name}"]) == 0
    finally:
        torch.set_num_threads(threads)
