"""What the loop gives a method beyond batches: each sample's position, passes over the
training and trusted sets, extra networks, and a restart of the schedule."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_idx

import mwnet
from mwnet.methods import MethodDescriptor, StepOutput
from mwnet.methods.plain import PlainMethod
from mwnet.methods.registry import unregister_method
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.experiment import build_experiment


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)


@dataclass
class ProbeOptions:
    restart: int = -1
    """The epoch that starts afresh (-1: none); the run then has that many extra epochs."""


class Probe(PlainMethod):
    """Cross-entropy on the model and on a peer network, recording what the loop gave it."""

    name = "probe"

    def __init__(self, ctx) -> None:
        super().__init__(ctx.model, ctx.optimizer, **ctx.common())
        self.ctx = ctx
        self.restart = ctx.options["probe"].restart
        self.extra_epochs = max(self.restart, 0)
        self.peer = ctx.new_network(1)
        self.peer_optimizer = ctx.new_optimizer(self.peer.parameters())
        self.initial = copy.deepcopy(ctx.model.state_dict())
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None, float]] = []
        self.passes: list[torch.Tensor] = []

    def begin_epoch(self, epoch: int) -> None:
        self.passes.append(self.ctx.training_set(self.model, lambda logits, y: y[:, None]))
        if epoch == self.restart:
            self.model.load_state_dict(self.initial)
            self.optimizer.state.clear()

    def restarts_at(self, epoch: int) -> bool:
        return epoch == self.restart

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"peer": self.peer}

    def step(self, x, y, index=None) -> StepOutput:
        lr = self.optimizer.param_groups[0]["lr"]
        self.seen.append((y.clone(), None if index is None else index.clone(), lr))
        self.peer_optimizer.zero_grad()
        F.cross_entropy(self.peer(x), y).backward()
        self.peer_optimizer.step()
        return super().step(x, y, index)

    def objective(self, logits, losses, y):
        return losses.mean(), None

    def state_dict(self):
        return {
            **super().state_dict(),
            "peer": self.peer.state_dict(),
            "peer_optimizer": self.peer_optimizer.state_dict(),
        }

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])


@pytest.fixture
def probes():
    built: list[Probe] = []

    def build(ctx):
        built.append(Probe(ctx))
        return built[-1]

    mwnet.register_method(
        MethodDescriptor("probe", build, {"probe": ProbeOptions}, reads_index=True)
    )
    yield built
    unregister_method("probe")


def _config(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.download=false",
            "data.subset=100",
            "data.meta_per_class=2",
            "data.batch_size=25",
            "data.augment=false",
            "data.noise=uniform",
            "data.noise_rate=0.4",
            "model.name=mlp",
            "model.options.hidden=[8]",
            "optim.lr=0.1",
            "optim.epochs=2",
            "optim.schedule=multistep",
            "optim.milestones=[1]",
            "optim.gamma=0.1",
            "method.name=probe",
            "threads=1",
            "device=cpu",
            f"out_dir={out}",
            *extra,
        ],
    )


def test_steps_get_each_samples_training_set_position(probes, fmnist_root, tmp_path):
    trainer, _ = loop.start(_config(fmnist_root, tmp_path, "name=a"), quiet=True)
    trainer.fit()
    labels = trainer.exp.data.train_labels
    probe = probes[-1]
    per_epoch = len(probe.seen) // 2
    for epoch in range(2):
        steps = probe.seen[epoch * per_epoch : (epoch + 1) * per_epoch]
        for y, index, _ in steps:
            assert torch.equal(y.cpu(), labels[index.cpu()])
        positions = torch.cat([index.cpu() for _, index, _ in steps])
        assert torch.equal(positions.sort().values, torch.arange(len(labels)))
    # the pass over the training set is in the same order as those positions
    assert all(torch.equal(p[:, 0].long(), labels) for p in probe.passes)
    assert len(trainer.exp.method.ctx.meta_set) == len(trainer.exp.data.meta_labels)


def test_extra_networks_are_the_runs_own_and_leave_the_global_draws(probes, fmnist_root, tmp_path):
    cfg = _config(fmnist_root, tmp_path, "name=b")
    before = torch.random.get_rng_state()
    exp = build_experiment(cfg)
    ctx = probes[-1].ctx
    after_build = torch.random.get_rng_state()
    one, again, two = ctx.new_network(1), ctx.new_network(1), ctx.new_network(2)
    assert torch.equal(torch.random.get_rng_state(), after_build)
    same = [torch.equal(a, b) for a, b in zip(one.parameters(), again.parameters(), strict=True)]
    assert all(same)
    assert not torch.equal(next(one.parameters()), next(two.parameters()))
    assert not torch.equal(next(one.parameters()), next(exp.model.parameters()))
    # the model itself is drawn as before: building extra networks moves no global draw
    torch.random.set_rng_state(before)
    assert torch.equal(next(build_experiment(cfg).model.parameters()), next(exp.model.parameters()))
    with pytest.raises(ValueError, match="from 1"):
        ctx.new_network(0)
    group = ctx.new_optimizer(one.parameters()).param_groups[0]
    assert (group["lr"], group["momentum"]) == (cfg.optim.lr, cfg.optim.momentum)


def test_a_restart_runs_the_schedule_again_and_resumes_exactly(probes, fmnist_root, tmp_path):
    cfg = _config(fmnist_root, tmp_path, "name=whole", "method.probe.restart=2")
    whole, whole_dir = loop.start(cfg, quiet=True)
    whole.fit()
    lrs = [lr for _, _, lr in probes[-1].seen]
    per_epoch = len(lrs) // 4
    by_epoch = [lrs[i * per_epoch] for i in range(4)]
    assert by_epoch == pytest.approx([0.1, 0.01, 0.1, 0.01], rel=1e-12)
    # the first phase's epochs are forgotten: a best no later epoch could beat is dropped
    first = _config(fmnist_root, tmp_path, "name=first", "method.probe.restart=2")
    trainer, _ = loop.start(first, quiet=True)
    trainer.fit(stop_after=2)
    trainer.best = {"epoch": 2, "test_acc": 101.0}
    trainer.best_val = {"epoch": 2, "val_acc": 101.0, "test_acc": 101.0}
    trainer.fit()
    assert trainer.best["epoch"] in (3, 4)
    assert trainer.best_val["epoch"] != 2

    cut = _config(fmnist_root, tmp_path, "name=cut", "method.probe.restart=2")
    trainer, cut_dir = loop.start(cut, quiet=True)
    trainer.fit(stop_after=2)  # stopped right before the restart
    trainer.close()
    loop.resume(cut_dir, quiet=True).fit()
    timing = ("epoch_time", "wall_time")

    def metrics(run_dir):
        rows = read_jsonl(run_dir / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert metrics(cut_dir) == metrics(whole_dir)
    a = load_checkpoint(whole_dir / "checkpoint.pt")
    b = load_checkpoint(cut_dir / "checkpoint.pt")
    for key in ("model",):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    peer_a, peer_b = a["method"]["peer"], b["method"]["peer"]
    assert all(torch.equal(peer_a[k], peer_b[k]) for k in peer_a)
    assert a["schedule"] == b["schedule"]
