"""cmwnet runs, the saved weighting net and its reuse (started from, or frozen), warm-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_idx
from test_loop import tiny_overrides

import mwnet
from mwnet.run import CheckpointError, read_json, read_jsonl, read_weight_function
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _train(root: Path, out: Path, name: str, method: str, *extra: str) -> Path:
    overrides = [*tiny_overrides(root, out, name, method), "threads=1", *extra]
    cfg = load_config("fmnist-lt-10", overrides)
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit()
    return run_dir


@pytest.fixture(scope="module")
def cmwnet_run(fmnist_root, tmp_path_factory) -> Path:
    return _train(fmnist_root, tmp_path_factory.mktemp("runs"), "cm", "cmwnet")


def test_cmwnet_run_saves_per_cluster_curves_and_its_net(cmwnet_run):
    summary = read_json(cmwnet_run / "summary.json")
    clusters = summary["class_clusters"]
    assert len(clusters) == 10 and max(clusters) == 2  # a long tail has three class sizes
    losses, curves = read_weight_function(cmwnet_run / "weight_function.csv")
    assert curves.shape == (len(losses), 3)
    assert (cmwnet_run / "weighting_function.png").stat().st_size > 0
    with (cmwnet_run / "weight_net.pt").open("rb") as f:  # plain data: loads weights-only
        raw = torch.load(f, weights_only=True)
    assert raw["state"]["weight_net"]["spec"]["kind"] == "cmwnet"
    saved = mwnet.load_weight_net(cmwnet_run)
    assert isinstance(saved.net, mwnet.ClassAwareWeightNet) and saved.kind == "cmwnet"
    assert saved.net.cluster_of_class.tolist() == clusters
    assert saved.normalize == "sum" and saved.num_classes == 10
    # the saved net is the trained one: it reproduces the curves the run wrote. The CSV keeps
    # 6 significant digits (relative rounding <= 5e-6 in the weight and in the loss it is read
    # back at); measured (AMD EPYC): 1.4 % of the bound used.
    grid = torch.as_tensor(losses, dtype=torch.float32)
    np.testing.assert_allclose(
        saved.net.curves(grid).detach().numpy(), curves, rtol=1e-4, atol=1e-5
    )


def test_frozen_reuse_never_reads_the_meta_set_and_keeps_the_net(
    cmwnet_run, tmp_path, fmnist_root, monkeypatch
):
    from mwnet.data import EndlessBatches

    drawn = []
    real_next = EndlessBatches.__next__
    monkeypatch.setattr(EndlessBatches, "__next__", lambda self: drawn.append(1) or real_next(self))
    run = _train(
        fmnist_root,
        tmp_path,
        "frozen",
        "cmwnet",
        f"method.mwnet.net_from={cmwnet_run}",
        "method.mwnet.meta=false",
    )
    assert drawn == []
    before = mwnet.load_weight_net(cmwnet_run).net.state_dict()
    after = mwnet.load_weight_net(run).net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    records = read_jsonl(run / "metrics.jsonl")
    assert all(r["meta_loss"] is None for r in records)
    assert all(r["mean_weight"] is not None for r in records)  # it still weighs


def test_starting_from_a_saved_net_continues_learning_it(cmwnet_run, tmp_path, fmnist_root):
    run = _train(fmnist_root, tmp_path, "warm", "cmwnet", f"method.mwnet.net_from={cmwnet_run}")
    before = mwnet.load_weight_net(cmwnet_run).net.state_dict()
    after = mwnet.load_weight_net(run).net.state_dict()
    assert not torch.equal(before["heads.weight"], after["heads.weight"])
    assert all(r["meta_loss"] is not None for r in read_jsonl(run / "metrics.jsonl"))


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("mwnet", (), "holds a cmwnet weighting net, but method.name=mwnet"),
        ("cmwnet", ("method.mwnet.normalize=mean",), "learned with method.mwnet.normalize=sum"),
    ],
)
def test_mismatched_reuse_is_a_one_line_error(
    cmwnet_run, fmnist_root, tmp_path, method, extra, message
):
    cfg = load_config(
        "fmnist-lt-10",
        [
            *tiny_overrides(fmnist_root, tmp_path, "x", method),
            f"method.mwnet.net_from={cmwnet_run}",
            *extra,
        ],
    )
    with pytest.raises(ConfigError, match=message) as err:
        loop.start(cfg, quiet=True)
    assert "\n" not in str(err.value)


def test_other_number_of_classes(cmwnet_run, tmp_path):
    from mwnet.train.experiment import reused_weight_net

    cfg = load_config(None, ["method.name=cmwnet", f"method.mwnet.net_from={cmwnet_run}"])
    with pytest.raises(ConfigError, match="learned for 10 classes, but this data has 100"):
        reused_weight_net(cfg, 100)


def test_reuse_needs_a_weight_net_file(tmp_path):
    (tmp_path / "weight_net.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mwnet.load_weight_net(tmp_path)
    with pytest.raises(CheckpointError, match="no saved weighting net there"):
        mwnet.load_weight_net(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no saved weighting net there"):
        mwnet.load_weight_net(tmp_path / "a-run-without-one")
    from mwnet.run import save_checkpoint

    save_checkpoint(tmp_path / "other.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="not a saved weighting net"):
        mwnet.load_weight_net(tmp_path / "other.pt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.mwnet.meta=false"], "must come from another run: set method.mwnet.net_from"),
        (
            ["method.name=ce", "method.mwnet.net_from=x"],
            "method.mwnet.net_from is read by mwnet, cmwnet, mwnet-sl, cmwnet-sl, not by method.n",
        ),
        (["method.name=cmwnet", "method.cmwnet.clusters=0"], "method.cmwnet.clusters must be >= 1"),
        (["method.warmup_epochs=-1"], "method.warmup_epochs must be >= 0"),
        (["method.mwnet.net_init=zeros"], r"method.mwnet.net_init.*default, flat"),
        (
            ["method.mwnet.net_init=flat", "method.mwnet.net_from=x"],
            "method.mwnet.net_init=flat initialises a fresh weighting net",
        ),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("method", ["mwnet", "cmwnet"])
def test_a_run_can_start_its_weighting_net_flat(fmnist_root, tmp_path, method):
    overrides = [*tiny_overrides(fmnist_root, tmp_path, "flat", method), "threads=1"]
    cfg = load_config("fmnist-lt-10", [*overrides, "method.mwnet.net_init=flat"])
    trainer, _ = loop.start(cfg, quiet=True)
    net = trainer.exp.method.reweighter.weight_net
    losses = torch.linspace(0, 10, 7)
    args = (losses, torch.arange(7)) if net.takes_labels else (losses,)
    with torch.no_grad():
        assert torch.equal(net(*args), torch.full((7,), 0.5))


def test_warmup_epochs_train_plain_cross_entropy_first(fmnist_root, tmp_path):
    run = _train(fmnist_root, tmp_path, "wu", "mwnet", "method.warmup_epochs=2")
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["meta_loss"] is None for r in records] == [True, True, False]
    assert [r["mean_weight"] is None for r in records] == [True, True, False]


def test_warmup_resumes_into_the_meta_phase(fmnist_root, tmp_path):
    """A run stopped in its warm-up resumes exactly: same records as one uninterrupted."""
    whole = _train(fmnist_root, tmp_path, "whole", "cmwnet", "method.warmup_epochs=1")
    cfg = load_config(
        "fmnist-lt-10",
        [
            *tiny_overrides(fmnist_root, tmp_path, "cut", "cmwnet"),
            "threads=1",
            "method.warmup_epochs=1",
        ],
    )
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    loop.resume(run_dir, quiet=True).fit()
    strip = ("epoch_time", "wall_time")
    got = [
        {k: v for k, v in r.items() if k not in strip}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]
    want = [
        {k: v for k, v in r.items() if k not in strip} for r in read_jsonl(whole / "metrics.jsonl")
    ]
    assert got == want


def _constant_curve(fmnist_root, tmp_path, name: str, logit: float) -> list[str]:
    """Overrides of a tiny MW-Net run with a frozen weighting net whose every weight is
    sigmoid(logit), whatever the loss."""
    from mwnet.core import WeightNet
    from mwnet.run.weight_net_file import save_weight_net

    net = WeightNet()
    with torch.no_grad():
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.fill_(logit)
    save_weight_net(tmp_path / f"{name}.pt", net, normalize="sum")
    frozen = ("method.mwnet.meta=false", f"method.mwnet.net_from={tmp_path / f'{name}.pt'}")
    return [*tiny_overrides(fmnist_root, tmp_path, name, "mwnet"), "threads=1", *frozen]


def test_a_curve_that_trusts_no_sample_is_reported(fmnist_root, tmp_path, capsys):
    """A weighting net whose every weight is 0 trains nothing from the data: each epoch
    counts those steps and its line warns; a working curve counts none."""
    # sigmoid(-1e4) is exactly 0 in float32
    overrides = _constant_curve(fmnist_root, tmp_path, "dead", -1e4)
    trainer, run_dir = loop.start(load_config("fmnist-lt-10", overrides), quiet=False)
    trainer.fit(stop_after=1)
    (record,) = read_jsonl(run_dir / "metrics.jsonl")
    assert record["zero_weight_steps"] == len(trainer.exp.train_batches) > 0
    assert record["largest_weight_share"] is None  # no step had any weight to share
    assert record["train_loss"] == 0.0
    assert "WARNING: every weight was 0 on" in capsys.readouterr().err

    working = _train(fmnist_root, tmp_path, "alive", "mwnet")
    assert all(r["zero_weight_steps"] == 0 for r in read_jsonl(working / "metrics.jsonl"))


def test_each_epoch_records_the_largest_share_of_a_step(fmnist_root, tmp_path):
    """A flat curve (every weight sigmoid(0) = 0.5) shares each step equally: the largest
    share is 1 / the smallest batch's size, exactly (a sum of equal halves is exact)."""
    overrides = _constant_curve(fmnist_root, tmp_path, "flat", 0.0)
    trainer, run_dir = loop.start(load_config("fmnist-lt-10", overrides), quiet=True)
    trainer.fit(stop_after=1)
    (record,) = read_jsonl(run_dir / "metrics.jsonl")
    n, size = len(trainer.exp.train_batches.images), trainer.exp.cfg.data.batch_size
    smallest = n - size * ((n - 1) // size)  # the epoch's last batch
    assert smallest < size  # so the record is the last batch's share, not a full one's
    assert record["largest_weight_share"] == 1 / smallest


def test_largest_share_by_hand():
    from mwnet.train.loop import largest_share

    assert largest_share(torch.tensor([0.0, 0.0, 3.0, 1.0])) == 0.75
    assert largest_share(torch.tensor([0.0, 0.0])) is None
