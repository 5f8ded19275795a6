"""Lightning runs for the tests of :mod:`mwnet.integrations.lightning`, and the same
training done by :class:`mwnet.methods.MetaWeightNet` in a plain loop, the reference.

Imported only by tests that first ``pytest.importorskip("lightning")``; the DDP runs
execute in processes forked from the test, so their functions live here, importable.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset

from mwnet import ClassAwareWeightNet, WeightNet
from mwnet.integrations.lightning import MetaWeighting
from mwnet.methods import MetaWeightNet

CLASSES = 4
FEATURES = 6


class LitMlp(pl.LightningModule):
    """A LightningModule as a user writes it: ``training_step`` for automatic optimisation
    (which MetaWeighting replaces during fit), momentum SGD, optional schedulers."""

    def __init__(self, schedulers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh())
        self.head = nn.Linear(16, CLASSES)
        self.schedulers = schedulers
        self.lrs: list[float] = []
        """The learning rate of every training step, read as it starts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_metric", 1.0)  # constant: a plateau scheduler sees no improvement

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
        if not self.schedulers:
            return optimizer
        configs = []
        for kind in self.schedulers:
            if kind == "step":  # x0.5 every 2nd batch of an epoch
                scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
                configs.append({"scheduler": scheduler, "interval": "step", "frequency": 2})
            elif kind == "epoch":  # x0.1 after every epoch
                scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
                configs.append({"scheduler": scheduler, "interval": "epoch"})
            elif kind == "plateau":  # x0.2 after every epoch without improvement
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, factor=0.2, patience=0
                )
                configs.append({"scheduler": scheduler, "monitor": "val_metric"})
        return [optimizer], configs


def trainer(**kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    settings.update(kwargs)
    return pl.Trainer(**settings)


@dataclass(frozen=True)
class Data:
    """Learnable float64 data: ``x`` of class ``c`` is raised at feature ``c``, so losses
    differ between samples and the weights with them."""

    x: torch.Tensor
    y: torch.Tensor
    x_meta: torch.Tensor
    y_meta: torch.Tensor

    @staticmethod
    def make(n: int, n_meta: int, seed: int = 1) -> Data:
        g = torch.Generator().manual_seed(seed)

        def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, CLASSES, (count,), generator=g)
            x = torch.randn(count, FEATURES, generator=g, dtype=torch.float64)
            x[torch.arange(count), y] += 1.5
            return x, y

        return Data(*draw(n), *draw(n_meta))

    def loaders(self, batch: int, meta_batch: int) -> tuple[DataLoader, DataLoader]:
        train = DataLoader(TensorDataset(self.x, self.y), batch_size=batch)
        trusted = DataLoader(TensorDataset(self.x_meta, self.y_meta), batch_size=meta_batch)
        return train, trusted


def weight_net(class_aware: bool, seed: int = 7) -> nn.Module:
    """A weighting net of the model's dtype; CMW-Net's with three class sizes."""
    torch.manual_seed(seed)
    net = ClassAwareWeightNet(torch.tensor([300, 200, 50, 10])) if class_aware else WeightNet()
    return net.double()


def initial_model(seed: int = 0, schedulers: tuple[str, ...] = ()) -> LitMlp:
    torch.manual_seed(seed)
    return LitMlp(schedulers).double()


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def within_batches(order: torch.Tensor, size: int, seed: int | None) -> torch.Tensor:
    """``order`` with the samples shuffled within each batch of ``size`` (None: as it is).
    Every batch then holds the same samples, so in exact arithmetic training does not
    change, only the order of its floating-point sums (tests/rounding.py)."""
    if seed is None:
        return order
    g = torch.Generator().manual_seed(seed)
    return torch.cat([b[torch.randperm(len(b), generator=g)] for b in order.split(size)])


def reference(
    data: Data,
    batch: int,
    meta_batch: int,
    epochs: int,
    *,
    class_aware: bool = False,
    epoch_order: Any = None,
    order_seed: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """What mwnet's own method does with the same model, weighting net and batches in a
    plain loop: ``epochs`` passes over the training samples in ``epoch_order(epoch)``
    (default: as stored), cut into batches, the trusted batches cycling in stored order.
    ``order_seed`` shuffles the samples within every batch (:func:`within_batches`)."""
    model = initial_model()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    net = weight_net(class_aware)
    meta_order = within_batches(torch.arange(len(data.y_meta)), meta_batch, order_seed)
    x_meta, y_meta = data.x_meta[meta_order], data.y_meta[meta_order]

    def meta() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for i in range(0, len(y_meta), meta_batch):
                yield x_meta[i : i + meta_batch], y_meta[i : i + meta_batch]

    method = MetaWeightNet(model, optimizer, meta(), weight_net=net, **options)
    losses = []
    for epoch in range(epochs):
        method.begin_epoch(epoch)
        order = torch.arange(len(data.y)) if epoch_order is None else epoch_order(epoch)
        order = within_batches(order, batch, None if order_seed is None else order_seed + epoch)
        x, y = data.x[order], data.y[order]
        for i in range(0, len(y), batch):
            losses.append(method.step(x[i : i + batch], y[i : i + batch]).loss)
    return {"model": state(model), "weight_net": state(net), "loss": torch.stack(losses)}


class Record(pl.Callback):
    """The global loss of every step, from the meta step's output to on_train_batch_end."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"])


def fit(
    data: Data,
    batch: int,
    meta_batch: int,
    epochs: int,
    *,
    class_aware: bool = False,
    callback_class: type[MetaWeighting] = MetaWeighting,
    **options: Any,
) -> dict[str, Any]:
    """:func:`reference`'s training, by a Lightning Trainer with MetaWeighting (or
    ``callback_class``, a planted bug), in one process."""
    model = initial_model()
    net = weight_net(class_aware)
    train, trusted = data.loaders(batch, meta_batch)
    record = Record()
    callback = callback_class(trusted, weight_net=net, **options)
    trainer(max_epochs=epochs, callbacks=[callback, record]).fit(model, train)
    return {
        "model": state(model),
        "weight_net": state(net),
        "loss": torch.stack(record.losses),
    }


# --- several processes ----------------------------------------------------------------


class DdpAllReduces(pl.Callback):
    """Counts the buckets DDP's own reducer all-reduces, through a communication hook
    registered on the DDP-wrapped module as fit starts (Lightning registers hooks of its
    own on GPUs only)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.model.register_comm_hook(state=None, hook=self._hook)

    def _hook(self, state, bucket):  # DDP refuses a string annotation (from __future__)
        self.calls += 1
        return default_hooks.allreduce_hook(state, bucket)


class ManualBackward(LitMlp):
    """Manual optimisation through ``manual_backward``, which does arm DDP's reducer: shows
    that :class:`DdpAllReduces` sees DDP's all-reduces when there are any."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        x, y = batch
        optimizer.zero_grad()
        self.manual_backward(F.cross_entropy(self(x), y))
        optimizer.step()


def ddp_trainer(world: int, **kwargs: Any) -> pl.Trainer:
    strategy = DDPStrategy(process_group_backend="gloo")
    return trainer(devices=world, strategy=strategy, **kwargs)


def run_rank(
    rank: int, world: int, store: str, cases: dict[str, dict], setup: dict, out_dir: str
) -> None:
    """One process of a DDP job started the way torchrun starts one (``LOCAL_RANK`` set,
    so Lightning launches nothing), every case in order, results saved to a file."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = "1"  # unused: the group is joined below, by a file store
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    data = Data.make(**setup["data"])
    results: dict[str, Any] = {}
    try:
        for name, options in cases.items():
            options = dict(options)
            class_aware = options.pop("class_aware", False)
            # each process starts elsewhere; rank 0 where the one-process reference starts:
            # DDP broadcasts rank 0's model, MetaWeighting rank 0's weighting net
            model, net = initial_model(seed=rank), weight_net(class_aware, seed=7 + rank)
            train, trusted = data.loaders(setup["batch"], setup["meta_batch"])
            hook, record = DdpAllReduces(), Record()
            callback = MetaWeighting(trusted, weight_net=net, **options)
            callbacks = [callback, record, hook]
            ddp = ddp_trainer(world, max_epochs=setup["epochs"], callbacks=callbacks)
            ddp.fit(model, train)
            reducer = callback.method.reweighter.reducer
            results[name] = {
                "model": state(model),
                "weight_net": state(net),
                "loss": torch.stack(record.losses),
                "ddp_allreduces": hook.calls,
                "mwnet_bytes": dict(reducer.counter.bytes),
                "global_step": ddp.global_step,
            }
        hook = DdpAllReduces()
        train, _ = data.loaders(setup["batch"], setup["meta_batch"])
        ddp_trainer(world, max_steps=1, callbacks=[hook]).fit(ManualBackward().double(), train)
        results["manual_backward_allreduces"] = hook.calls
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def run_on_ranks(
    cases: dict[str, dict], setup: dict, world: int, tmp: Path, timeout: float = 120
) -> list[dict]:
    """:func:`run_rank` on ``world`` processes forked from this one (no second import of
    torch and Lightning: seconds instead of tens of seconds); results per rank."""
    tmp.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        run_rank,
        args=(world, str(tmp / "store"), cases, setup, str(tmp)),
        nprocs=world,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world} ranks did not finish in {timeout} s")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world)]
