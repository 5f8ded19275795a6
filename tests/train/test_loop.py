"""Run directories, exact resume, and what a killed run leaves behind."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_idx
from same_state import assert_identical, training_state

import mwnet
from mwnet.run import CheckpointError, load_checkpoint, read_jsonl
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
        "model.pt",
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
    assert saved["last_test_acc"] == round(records[-1]["test_acc"], 2)
    assert saved["best_test_acc"] == round(max(r["test_acc"] for r in records), 2)
    assert saved["units"]["last_test_acc"] == "percent"
    # the share of training labels the run changed, counted from its per-sample table;
    # flip2 at 40 % changes each label with probability 0.4 (within 4 binomial sd)
    table = np.genfromtxt(run_dir / "sample_weights.csv", delimiter=",", names=True)
    changed = table["given_label"] != table["true_label"]
    assert np.array_equal(changed, table["corrupted"] == 1)
    assert saved["realized_noise_rate"] == round(changed.mean(), 4)
    assert abs(saved["realized_noise_rate"] - 0.4) <= 4 * math.sqrt(0.4 * 0.6 / len(changed))


@pytest.mark.parametrize("method", ["mwnet", "finetune"])
def test_resumed_run_ends_with_the_same_metrics(fmnist_root, tmp_path, method):
    extra = ["method.finetune.epochs=1"] if method == "finetune" else []
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


def test_run_killed_hard_resumes_in_a_new_process_to_the_same_final_state(fmnist_root, tmp_path):
    """`mwnet train` killed with SIGKILL once its first epoch is saved, then `mwnet train
    --resume` in a new process, ends bit for bit where an uninterrupted run of the same
    config ends: model parameters and BatchNorm buffers, optimizer momentum, weighting net
    and its Adam state, schedule, RNG and batch iterators, and the logged metrics."""
    out = tmp_path / "runs"
    src = str(Path(mwnet.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # nothing cached is found ...
    }
    env.pop("MWNET_DATA", None)

    def train(name: str) -> subprocess.Popen:
        overrides = tiny_overrides(fmnist_root, out, name)  # cnn_small: BN and dropout
        overrides += ["data.download=false", "threads=1"]  # ... nor downloaded
        cmd = [sys.executable, "-m", "mwnet", "train", "--preset", "fmnist-flip2-40"]
        return subprocess.Popen(
            [*cmd, "--quiet", *overrides],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    straight, killed = train("straight"), train("killed")
    run_dir = out / "killed"
    deadline = time.monotonic() + 120
    metrics, checkpoint = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    # epoch 1's metrics line comes first, then its checkpoint (atomic: whole once it exists)
    while not (metrics.exists() and checkpoint.exists()):
        assert killed.poll() is None, killed.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    saved_epoch = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= saved_epoch < 3  # killed mid-run, not after it ended
    assert read_jsonl(metrics)[0]["epoch"] == 1
    assert not (run_dir / "sample_weights.csv").exists()

    resume = [sys.executable, "-m", "mwnet", "train", "--resume", str(run_dir), "--quiet"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run_dir} after epoch {saved_epoch}" in done.stderr
    _, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err

    want = load_checkpoint(out / "straight" / "checkpoint.pt")
    got = load_checkpoint(run_dir / "checkpoint.pt")
    assert got["epoch"] == want["epoch"] == 3
    assert any("running_var" in k for k in want["model"])  # the model has BatchNorm
    assert want["method"]["weight_optimizer"]["state"]  # the weighting net was trained
    for part in ("model", "optimizer", "method", "schedule", "rng", "train_batches"):
        assert_identical(got[part], want[part], part)
    assert_identical(training_state(got), training_state(want))
    a = _without_timing(read_jsonl(out / "straight" / "metrics.jsonl"))
    b = _without_timing(read_jsonl(run_dir / "metrics.jsonl"))
    assert [r["epoch"] for r in b] == [1, 2, 3] and a == b
    for name in ("sample_weights.csv", "weight_function.csv"):
        assert (run_dir / name).read_text() == (out / "straight" / name).read_text()


def test_each_epoch_is_evaluated_with_that_epochs_weights(fmnist_root, tmp_path):
    """The test accuracy logged for epoch k is that of the model saved after epoch k,
    computed here independently of the loop from the checkpoint alone."""
    from mwnet.train.evaluate import accuracy, predict
    from mwnet.train.experiment import build_experiment

    cfg = load_config("fmnist-flip2-40", tiny_overrides(fmnist_root, tmp_path, "evals"))
    trainer, run_dir = loop.start(cfg, quiet=True)
    fresh = build_experiment(cfg)  # another model, loaded from each checkpoint in turn
    seen = []
    for epoch in (1, 2, 3):
        trainer.fit(stop_after=epoch)
        fresh.model.load_state_dict(load_checkpoint(run_dir / loop.CHECKPOINT)["model"])
        d = fresh.data
        pred, _ = predict(fresh.model, d.test_images, d.test_labels, fresh.normalize, fresh.device)
        logged = read_jsonl(run_dir / "metrics.jsonl")[-1]
        assert logged["epoch"] == epoch
        assert logged["test_acc"] == pytest.approx(accuracy(pred, d.test_labels), abs=1e-9)
        seen.append({k: v.clone() for k, v in fresh.model.state_dict().items()})
    assert any(not torch.equal(seen[0][k], seen[2][k]) for k in seen[0])  # it did train
