"""Runs whose weighting net reads more than the loss (method.mwnet.inputs): an exact
resume with the per-sample averages and loss sequences, the saved net's record of its
inputs, its reuse, and the config's errors; and runs whose weights are gated by the meta
gradient's sign."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_idx

import mwnet
from mwnet.core.weight_inputs import WEIGHT_INPUTS
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config

INPUTS = list(WEIGHT_INPUTS)
EVERY = f"method.mwnet.inputs=[{','.join(INPUTS)}]"
TIMING = ("epoch_time", "wall_time")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)


def _overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=5",
        "data.batch_size=20",
        "data.meta_batch_size=20",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        "threads=1",
        *extra,
    ]


def _run(root: Path, out: Path, name: str, *extra: str, stop_after: int | None = None):
    trainer, run_dir = loop.start(
        load_config("fmnist-flip2-40", _overrides(root, out, name, *extra)), quiet=True
    )
    trainer.fit(stop_after=stop_after)
    return trainer, run_dir


@pytest.fixture(scope="module")
def every_input_run(root, tmp_path_factory) -> Path:
    return _run(root, tmp_path_factory.mktemp("runs"), "every", EVERY)[1]


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_a_run_with_averages_resumes_bit_for_bit(root, tmp_path, every_input_run):
    trainer, cut = _run(root, tmp_path, "cut", EVERY, stop_after=1)
    trainer.close()
    loop.resume(cut, quiet=True).fit()
    assert _metrics(cut) == _metrics(every_input_run)
    a = load_checkpoint(every_input_run / "checkpoint.pt")
    b = load_checkpoint(cut / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    dynamics = a["method"]["dynamics"]
    assert dynamics["seen"].all()  # two epochs: every sample visited
    sequences = dynamics["table"][:, 4:]  # after the four averages, K = 10 losses
    assert sequences.shape[1] == 10
    # two visits each: the first loss in the first nine columns, the second one last
    assert torch.equal(sequences[:, :9], sequences[:, :1].expand(-1, 9))
    assert bool((sequences[:, 8] != sequences[:, 9]).all())
    for k in ("table", "seen"):
        assert torch.equal(dynamics[k], b["method"]["dynamics"][k]), k
    for k, v in a["method"]["weight_net"].items():
        assert torch.equal(v, b["method"]["weight_net"][k]), k


def test_the_saved_net_records_what_it_reads(every_input_run):
    with (every_input_run / "weight_net.pt").open("rb") as f:  # plain data: weights-only
        spec = torch.load(f, weights_only=True)["state"]["weight_net"]["spec"]
    inputs = INPUTS
    assert spec["inputs"] == inputs and spec["num_classes"] == 10
    assert spec["dynamics_decay"] == 0.9 and spec["history"] == 10
    assert spec["transforms"] == {n: "one-hot" if n == "class" else "identity" for n in inputs}
    saved = mwnet.load_weight_net(every_input_run)
    assert saved.inputs == tuple(inputs) and saved.dynamics_decay == 0.9
    assert saved.history == 10 and saved.net.history == 10
    assert saved.net.net[0].in_features == 6 + 10 + 10
    # a weight is no function of the loss alone: no curve is written
    assert not (every_input_run / "weight_function.csv").exists()


def test_a_frozen_reuse_reads_the_same_inputs(root, tmp_path, every_input_run):
    extra = (EVERY, f"method.mwnet.net_from={every_input_run}", "method.mwnet.meta=false")
    trainer, run = _run(root, tmp_path, "frozen", *extra)
    before = mwnet.load_weight_net(every_input_run).net.state_dict()
    after = mwnet.load_weight_net(run).net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.exp.method.reweighter.inputs.seen.all()  # it still keeps the averages
    assert all(r["meta_loss"] is None for r in read_jsonl(run / "metrics.jsonl"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("method.mwnet.inputs=[loss,margin]",),
            r"reads loss, class, loss_ema, margin, confidence, agreement, loss_history, "
            r"loss_rank, but method.mwnet.inputs=\[loss,margin\]; set "
            r"method.mwnet.inputs=\[loss,class,",
        ),
        ((), r"reads .*, but method.mwnet.inputs=\[loss\]"),
        ((EVERY, "method.mwnet.dynamics_decay=0.5"), "set method.mwnet.dynamics_decay=0.9"),
        ((EVERY, "method.mwnet.history=3"), "set method.mwnet.history=10"),
    ],
)
def test_a_net_fed_other_inputs_is_refused(root, tmp_path, every_input_run, extra, message):
    cfg = load_config(
        "fmnist-flip2-40",
        _overrides(root, tmp_path, "x", f"method.mwnet.net_from={every_input_run}", *extra),
    )
    with pytest.raises(ConfigError, match=message) as err:
        loop.start(cfg, quiet=True)
    assert "\n" not in str(err.value)


def test_the_loss_alone_keeps_the_runs_state_and_curve(root, tmp_path):
    """inputs=[loss]: nothing new in the checkpoint, the curve is written as before."""
    _, run = _run(root, tmp_path, "loss", "method.mwnet.inputs=[loss]", "optim.epochs=1")
    state = load_checkpoint(run / "checkpoint.pt")["method"]
    assert set(state) == {"steps_done", "weight_net", "weight_optimizer"}
    assert (run / "weight_function.csv").exists()
    assert "inputs" not in repr(mwnet.load_weight_net(run).net)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.mwnet.inputs=[loss,entropy]"],
            "method.mwnet.inputs: unknown input 'entropy'; choose from loss, class, loss_ema, "
            "margin, confidence, agreement, loss_history, loss_rank",
        ),
        (["method.mwnet.dynamics_decay=1.0"], r"dynamics_decay must lie in \[0, 1\)"),
        (["method.mwnet.history=0"], "method.mwnet.history must be a whole number of visits"),
        (
            ["method.mwnet.inputs=[loss,margin]", "method.mwnet.freeze_tolerance=0.01"],
            "has none; use method.mwnet.freeze_epoch instead",
        ),
        (
            [
                "method.name=mwnet-sl",
                "method.label_correction.mixup=true",
                "method.mwnet.normalize=mean",
                "method.mwnet.inputs=[loss,margin]",
            ],
            "method.mwnet.inputs may then hold loss and class only",
        ),
        (["method.name=ce", "method.mwnet.inputs=[loss,margin]"], "is read by mwnet, cmwnet"),
        (["method.mwnet.gate=sign"], "method.mwnet.gate=sign is not valid: expected one of"),
        (
            ["method.mwnet.gate=meta-sign", "method.mwnet.hypergrad=head"],
            "restricts the virtual step to part of the model; set method.mwnet.hypergrad=fast",
        ),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_gated_run_reads_a_meta_batch_every_step_and_drops_samples(root, tmp_path, monkeypatch):
    from mwnet.data import EndlessBatches

    drawn = []
    real_next = EndlessBatches.__next__
    monkeypatch.setattr(EndlessBatches, "__next__", lambda self: drawn.append(1) or real_next(self))
    extra = ("method.mwnet.gate=meta-sign", "method.mwnet.meta_interval=2", "optim.epochs=1")
    trainer, run = _run(root, tmp_path, "gated", *extra)
    steps = trainer.exp.method.steps_done
    assert steps > 2 and len(drawn) == steps  # not only the weighting net's every other step
    records = read_jsonl(run / "metrics.jsonl")
    assert records[0]["meta_loss"] is not None
    weights = np.loadtxt(run / "sample_weights.csv", delimiter=",", skiprows=1, usecols=-1)
    assert (weights == 0).any() and (weights > 0).any()  # the gate dropped some samples
