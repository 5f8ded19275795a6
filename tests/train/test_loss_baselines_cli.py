"""The loss-only baselines through ``mwnet train``: their option groups from the command
line, the weights they report, and a resume that ends where an unbroken run does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_data import write_idx

from mwnet.cli import main
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config

TIMING = ("epoch_time", "wall_time")

# name, its option group as given on the command line, whether it reports weights
BASELINES = [
    ("gce", {"gce": {"q": 0.5, "truncated": True, "k": 0.2, "truncate_from": 1}}, True),
    ("sce", {"sce": {"alpha": 0.5, "beta": 0.5}}, False),
    ("bootstrap-hard", {"bootstrap_hard": {"beta": 0.7}}, False),
    ("bootstrap-soft", {"bootstrap_soft": {"beta": 0.9}}, False),
    ("self-paced", {"self_paced": {"start_fraction": 0.6, "full_epoch": 4}}, True),
    ("mentornet-pd", {"mentornet": {"percentile": 0.6, "burn_in_epochs": 1}}, True),
]


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _common(root: Path, out: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=3",
        "data.batch_size=25",
        "data.augment=false",
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
    ]


def _flags(group: dict) -> list[str]:
    ((name, fields),) = group.items()
    return [f"method.{name}.{k}={v}" for k, v in fields.items()]


@pytest.mark.parametrize(("name", "group", "weighted"), BASELINES, ids=[b[0] for b in BASELINES])
def test_each_trains_with_mwnet_train(name, group, weighted, fmnist_root, tmp_path):
    args = ["train", "--quiet", *_common(fmnist_root, tmp_path), f"method.name={name}"]
    assert main([*args, *_flags(group), "name=run"]) == 0
    run_dir = tmp_path / "run"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["method"]
    assert saved["name"] == name and set(saved) == {"name", "compile", "warmup_epochs", *group}
    for g, fields in group.items():  # every given value kept, the rest at their defaults
        assert all(saved[g][k] == v for k, v in fields.items())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_loss"] == r["train_loss"] for r in rows)  # finite, not NaN
    # the loop records the weights of clean and corrupted samples for methods that weigh
    assert (rows[-1].get("mean_weight_clean") is not None) == weighted
    state = load_checkpoint(run_dir / "checkpoint.pt")["method"]
    if name in ("gce", "self-paced", "mentornet-pd"):
        assert state["epoch"] == 1  # the last epoch begun
    if name == "mentornet-pd":
        assert state["threshold"] > 0


@pytest.mark.parametrize("name", ["self-paced", "mentornet-pd"])
def test_a_resumed_run_ends_as_an_unbroken_one(name, fmnist_root, tmp_path):
    group = dict((b[0], b[1]) for b in BASELINES)[name]
    overrides = [*_common(fmnist_root, tmp_path), f"method.name={name}", *_flags(group)]
    broken, broken_dir = loop.start(load_config(None, [*overrides, "name=broken"]), quiet=True)
    broken.fit(stop_after=1)
    assert main(["train", "--resume", str(broken_dir), "--quiet"]) == 0
    whole, whole_dir = loop.start(load_config(None, [*overrides, "name=whole"]), quiet=True)
    whole.fit()

    def metrics(run_dir: Path) -> list[dict]:
        rows = read_jsonl(run_dir / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert metrics(broken_dir) == metrics(whole_dir)
    end = [load_checkpoint(d / "checkpoint.pt")["method"] for d in (broken_dir, whole_dir)]
    assert end[0] == end[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.name=gce", "method.gce.q=0"], r"method\.gce\.q must lie in \(0, 1\]"),
        (["method.name=sce", "method.sce.alpha=-1"], "method.sce.alpha and method.sce.beta"),
        (["method.name=bootstrap-hard", "method.bootstrap_hard.beta=2"], "must lie in"),
        (["method.name=self-paced", "method.self_paced.start_fraction=0"], "start_fraction"),
        (["method.name=mentornet-pd", "method.mentornet.ema_decay=1"], "ema_decay must lie"),
        (["method.name=gce", "method.mentornet.percentile=0.5"], "read by mentornet-pd"),
    ],
)
def test_bad_values_are_refused_with_the_config(overrides, message):
    """Before any data is read: each group is built as its dataclass, which checks itself."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
