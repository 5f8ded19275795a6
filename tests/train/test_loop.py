"""Run directories, exact resume, and what a killed run leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.run import CheckpointError, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

TIMING = ("epoch_time", "wall_time")


def tiny_overrides(root: Path, out: Path, name: str, method: str = "mwnet") -> list[str]:
    return [
        f"data.root={root}",
        "data.meta_per_class=5",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=50",
        "optim.epochs=3",
        "optim.milestones=[2]",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        f"method.name={method}",
    ]


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_run_directory_has_every_artifact(fmnist_root, tmp_path):
    cfg = load_config("fmnist-flip2-40", tiny_overrides(fmnist_root, tmp_path, "full"))
    trainer, run_dir = loop.start(cfg, quiet=True)
    summary = trainer.fit()
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.pt",
        "summary.json",
        "sample_weights.csv",
        "weight_function.csv",
        "weighting_function.png",
        "weight_histogram.png",
        "accuracy.png",
    } <= names
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in (
        "train_loss",
        "test_acc",
        "train_acc_clean",
        "train_acc_corrupted",
        "mean_weight_clean",
        "mean_weight_corrupted",
        "meta_loss",
        "lr",
        "wall_time",
    ):
        assert records[-1][key] is not None, key
    assert records[0]["lr"] == pytest.approx(0.01) and records[2]["lr"] == pytest.approx(0.001)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary
    assert saved["last_test_acc"] == records[-1]["test_acc"]
    assert saved["best_test_acc"] == max(r["test_acc"] for r in records)
    assert 0 < saved["realized_noise_rate"] < 1


@pytest.mark.parametrize("method", ["mwnet", "finetune"])
def test_resumed_run_ends_with_the_same_metrics(fmnist_root, tmp_path, method):
    extra = ["method.finetune_epochs=1"] if method == "finetune" else []
    straight_cfg = load_config(
        "fmnist-flip2-40", [*tiny_overrides(fmnist_root, tmp_path, "straight", method), *extra]
    )
    straight, straight_dir = loop.start(straight_cfg, quiet=True)
    straight.fit()
    cut_cfg = load_config(
        "fmnist-flip2-40", [*tiny_overrides(fmnist_root, tmp_path, "cut", method), *extra]
    )
    cut, cut_dir = loop.start(cut_cfg, quiet=True)
    cut.fit(stop_after=1)
    del cut
    resumed = loop.resume(cut_dir, quiet=True)
    assert resumed.epoch == 1
    resumed.fit()
    a = read_jsonl(straight_dir / "metrics.jsonl")
    b = read_jsonl(cut_dir / "metrics.jsonl")
    assert _without_timing(a) == _without_timing(b)
    for (k, v), w in zip(
        straight.exp.model.state_dict().items(),
        resumed.exp.model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(v, w), k
    weights = "sample_weights.csv"
    assert (straight_dir / weights).exists() == (method == "mwnet")
    if method == "mwnet":
        assert (straight_dir / weights).read_text() == (cut_dir / weights).read_text()


def test_resume_drops_metrics_written_after_the_checkpoint(fmnist_root, tmp_path):
    cfg = load_config("fmnist-flip2-40", tiny_overrides(fmnist_root, tmp_path, "r", "ce"))
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    with (run_dir / "metrics.jsonl").open("a") as f:  # as if killed after the metrics line
        f.write(json.dumps({"epoch": 2, "test_acc": 1.0}) + "\n")
    resumed = loop.resume(run_dir, quiet=True)
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]
    resumed.fit()
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_corrupt_checkpoint_is_a_clear_error(fmnist_root, tmp_path):
    cfg = load_config("fmnist-flip2-40", tiny_overrides(fmnist_root, tmp_path, "bad", "ce"))
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt") as err:
        loop.resume(run_dir, quiet=True)
    assert "\n" not in str(err.value)


def test_existing_run_is_not_overwritten(fmnist_root, tmp_path):
    cfg = load_config("fmnist-flip2-40", tiny_overrides(fmnist_root, tmp_path, "once", "ce"))
    trainer, _ = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    with pytest.raises(FileExistsError, match="--resume"):
        loop.start(cfg, quiet=True)
