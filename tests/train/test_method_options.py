"""Option groups per method, the flat layout of earlier versions, and a user's own method."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fake_data import write_idx

import mwnet
from mwnet.cli import main
from mwnet.methods import MethodDescriptor
from mwnet.methods.plain import PlainMethod
from mwnet.methods.registry import unregister_method
from mwnet.run import load_checkpoint, read_jsonl, save_checkpoint
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config, load_config_file
from mwnet.train.experiment import build_experiment

FLAT_CONFIG = Path(__file__).parent / "fixtures" / "flat_config.yaml"
"""A config.yaml as mwnet wrote it before the option groups (``method.normalize``, ...)."""
TIMING = ("epoch_time", "wall_time")


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _flat_config(root: Path, out: Path) -> str:
    text = FLAT_CONFIG.read_text()
    return text.replace("DATA_ROOT", str(root)).replace("OUT_DIR", str(out))


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in TIMING}
        for row in read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_a_flat_config_loads_into_the_groups(fmnist_root, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(_flat_config(fmnist_root, tmp_path))
    m = load_config_file(path).method
    assert m.name == "cmwnet"
    assert (m.mwnet.normalize, m.mwnet.net_lr, m.mwnet.meta_interval) == ("mean", 0.01, 2)
    assert m.cmwnet.clusters == 2
    # what cmwnet never read (focal's gamma, the teacher of a clean-set run) is left out
    assert set(m) == {"name", "compile", "warmup_epochs", "mwnet", "cmwnet"}


def test_a_flat_run_directory_resumes_as_if_never_stopped(fmnist_root, tmp_path):
    """A run directory of the flat layout (its config.yaml and the config in its
    checkpoint) continues under the grouped layout, to the metrics of a run of the grouped
    config that never stopped."""
    flat = yaml.safe_load(_flat_config(fmnist_root, tmp_path / "old"))
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(flat))
    cfg = load_config_file(path)
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(flat))  # as the old version wrote
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state["config"] = flat
    save_checkpoint(run_dir / "checkpoint.pt", state)

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0

    grouped = load_config(
        None,
        [
            f"data.root={fmnist_root}",
            "data.download=false",
            "data.subset=200",
            "data.meta_per_class=3",
            "data.batch_size=50",
            "data.meta_batch_size=20",
            "data.augment=false",
            "data.noise=flip2",
            "data.noise_rate=0.4",
            "model.name=mlp",
            "model.options.hidden=[16]",
            "optim.lr=0.05",
            "optim.epochs=2",
            "optim.milestones=[1]",
            "method.name=cmwnet",
            "method.mwnet.normalize=mean",
            "method.mwnet.net_lr=0.01",
            "method.mwnet.meta_interval=2",
            "method.cmwnet.clusters=2",
            "seed=3",
            "threads=1",
            "device=cpu",
            f"out_dir={tmp_path / 'new'}",
            "name=ref",
        ],
    )
    reference, ref_dir = loop.start(grouped, quiet=True)
    reference.fit()
    got, want = _metrics(run_dir), _metrics(ref_dir)
    assert [r["epoch"] for r in got] == [1, 2]
    assert got == want

    # signals.npz as the old version wrote it names the run by the old fingerprint: a
    # CRC-32 of the flat config but where it lives and what a resume may change
    old_safe = [
        "description",
        "name",
        "out_dir",
        "optim.epochs",
        "eval_train",
        "data.eval_batch_size",
        "data.root",
        "data.download",
        "device",
        "threads",
        "method.compile",
        "method.low_memory",
        "distributed.backend",
        "distributed.timeout",
    ]
    kept = {k: v for k, v in _flat_items(flat) if k not in old_safe}
    old_crc = zlib.crc32(json.dumps(kept, sort_keys=True, default=str).encode())
    signals = dict(np.load(run_dir / "signals.npz"))
    for crc, code in ((old_crc + 1, 2), (old_crc, 0)):
        signals["run_config_crc"] = np.asarray(crc)
        np.savez(run_dir / "signals.npz", **signals)
        assert main(["issues", str(run_dir)]) == code


def _flat_items(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_a_flat_override_is_applied_with_a_note(capsys):
    cfg = load_config("fmnist-flip2-40", ["method.normalize=mean", "method.weight_lr=0.01"])
    assert (cfg.method.mwnet.normalize, cfg.method.mwnet.net_lr) == ("mean", 0.01)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "mwnet: note: method.normalize is the old name of method.mwnet.normalize; the flat "
        "method keys will go in a later version",
        "mwnet: note: method.weight_lr is the old name of method.mwnet.net_lr; the flat "
        "method keys will go in a later version",
    ]
    gamma = load_config(None, ["method.name=class-balanced", "method.focal_gamma=2"])
    assert gamma.method.class_balanced.gamma == 2.0 and "focal" not in gamma.method


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.name=ce", "method.mwnet.normalize=mean"],
            "method.mwnet.normalize is read by mwnet, cmwnet, mwnet-sl, cmwnet-sl, not by "
            "method.name=ce",
        ),
        (
            ["method.name=ce", "method.normalize=mean"],
            r"method.normalize \(now method.mwnet.normalize\) is read by mwnet",
        ),
        (["method.name=mwnet", "method.focal.gamma=2"], "method.focal.gamma is read by focal"),
        (["method.name=mwnet", "method.cmwnet.clusters=2"], "read by cmwnet, cmwnet-sl"),
        (["method.name=l2rw", "method.l2rw.hypergrad=head"], "expected one of fast, reverse"),
        (["method.name=focal", "method.focal.gama=2"], "did you mean 'method.focal.gamma'"),
    ],
)
def test_a_key_of_another_method_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_show_config_prints_the_chosen_group_only(capsys):
    assert main(["train", "--show-config", "method.name=focal", "method.focal.gamma=2"]) == 0
    method = yaml.safe_load(capsys.readouterr().out)["method"]
    assert method == {
        "name": "focal",
        "compile": False,
        "warmup_epochs": 0,
        "focal": {"gamma": 2.0},
    }


@dataclass
class ScaledOptions:
    scale: float = 1.0


class ScaledCrossEntropy(PlainMethod):
    """Cross-entropy times a constant: a user's own loss-only method."""

    name = "scaled-ce"

    def __init__(self, model, optimizer, scale: float, **common) -> None:
        super().__init__(model, optimizer, **common)
        self.scale = scale

    def objective(self, logits, losses, y):
        return self.scale * losses.mean(), None


@pytest.fixture
def scaled_ce():
    built: list[ScaledCrossEntropy] = []

    def build(ctx):
        method = ScaledCrossEntropy(
            ctx.compiled_model(), ctx.optimizer, ctx.options["scaled"].scale, **ctx.common()
        )
        built.append(method)
        return method

    mwnet.register_method(MethodDescriptor("scaled-ce", build, {"scaled": ScaledOptions}))
    yield built
    unregister_method("scaled-ce")


def test_a_registered_method_trains_with_mwnet_train(scaled_ce, fmnist_root, tmp_path):
    common = [
        f"data.root={fmnist_root}",
        "data.download=false",
        "data.subset=100",
        "data.meta_per_class=3",
        "data.batch_size=50",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=1",
        "optim.weight_decay=0",
        "threads=1",
        "device=cpu",
        f"out_dir={tmp_path}",
    ]
    args = ["train", "--quiet", *common, "method.name=scaled-ce", "method.scaled.scale=0"]
    assert main([*args, "name=mine"]) == 0
    assert scaled_ce[-1].scale == 0.0
    saved = yaml.safe_load((tmp_path / "mine" / "config.yaml").read_text())["method"]
    assert saved["scaled"] == {"scale": 0.0}
    # scale 0 and no weight decay: no step moves the model, which ends as it started
    trained = load_checkpoint(tmp_path / "mine" / "checkpoint.pt")["model"]
    start = build_experiment(load_config_file(tmp_path / "mine" / "config.yaml")).model
    assert all(torch.equal(trained[k], v) for k, v in start.state_dict().items())
    assert main([*args[:-1], "method.scaled.scale=1", "name=moved"]) == 0
    moved = load_checkpoint(tmp_path / "moved" / "checkpoint.pt")["model"]
    assert not all(torch.equal(moved[k], v) for k, v in start.state_dict().items())
    with pytest.raises(ConfigError, match=r"method\.scaled\.scale is read by scaled-ce"):
        load_config(None, ["method.name=ce", "method.scaled.scale=2"])


def test_a_registered_method_is_compared_and_in_the_suite(scaled_ce, tmp_path):
    from mwnet.suite.grid import QUICK, cells
    from mwnet.train.compare import method_configs

    _, configs = method_configs(
        None, ["method.scaled.scale=3", f"out_dir={tmp_path}"], ["ce", "scaled-ce"]
    )
    assert [set(c.method) - {"name", "compile", "warmup_epochs"} for c in configs] == [
        set(),
        {"scaled"},
    ]
    assert configs[1].method.scaled.scale == 3.0
    with pytest.raises(ConfigError, match="none of ce, mwnet reads it"):
        method_configs(None, ["method.scaled.scale=3"], ["ce", "mwnet"])

    runs = cells(QUICK, ("uniform-60",), ("scaled-ce",))
    assert runs and all(c.method.name == "scaled-ce" for c in runs)
    for cell in runs:
        cfg = load_config(None, list(cell.overrides))
        assert cfg.method.name == "scaled-ce" and cfg.method.scaled.scale == 1.0


def test_a_registered_method_has_its_rows_in_the_suite_report(scaled_ce, tmp_path, monkeypatch):
    """A user's method run by the suite (``--methods``) is in the report's tables, among
    the extra methods, beside the table's own."""
    from fake_data import write_idx

    root = write_idx(tmp_path / "data" / "fashion-mnist", per_class=30, test_per_class=5)
    monkeypatch.setenv("MWNET_DATA", str(root.parent))
    out, docs = tmp_path / "out", tmp_path / "docs"
    args = ["suite", "--quick", "--jobs", "1", "--out", str(out), "--docs", str(docs)]
    assert main([*args, "--settings", "flip2-40", "--methods", "ce,scaled-ce"]) == 0
    results = (docs / "RESULTS.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("|") and "scaled-ce" in line]
    assert rows, "the registered method has no row in RESULTS.md"
