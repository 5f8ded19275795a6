"""`torchrun -m mwnet train` on two CPU ranks: one run directory, clear failures, resume.

A test hook (``MWNET_TEST_FAULT``, see :class:`mwnet.distributed.FaultHook`) makes rank 1
crash or hang at a chosen step; the job must then end non-zero within a bounded time with
an error that names the problem, keep the finished epochs, and resume on any number of
ranks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_workers import source_env, torchrun
from omegaconf import OmegaConf

from mwnet.run import read_json, read_jsonl

pytestmark = pytest.mark.distributed

STEPS_PER_EPOCH = 4  # data.subset=200 / data.batch_size=50


def _train_args(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        "train",
        "--preset",
        "fmnist-flip2-40",
        "--quiet",
        f"data.root={root}",
        "data.meta_per_class=5",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=50",
        "model.name=mlp",
        "optim.epochs=3",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        "threads=1",
        *extra,
    ]


def _fault(kind: str, step: int) -> dict[str, str]:
    faults = {"MWNET_TEST_FAULT": kind, "MWNET_TEST_FAULT_RANK": "1"}
    return {**source_env(), **faults, "MWNET_TEST_FAULT_STEP": str(step)}


def test_crashed_rank_ends_the_job_and_one_process_resumes(fmnist_root, tmp_path):
    out = tmp_path / "runs"
    began = time.monotonic()
    crashed = torchrun(
        2, _train_args(fmnist_root, out, "crash"), _fault("exit", 2 * STEPS_PER_EPOCH + 1), 90
    )
    assert crashed.returncode != 0
    assert time.monotonic() - began < 60
    # torchrun's summary names the rank that exited
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s+exitcode\s*:\s*1", crashed.stderr)
    assert [p.name for p in out.iterdir()] == ["crash"]  # rank 0 alone wrote
    run_dir = out / "crash"
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]

    resume = [sys.executable, "-m", "mwnet", "train", "--resume", str(run_dir), "--quiet"]
    done = subprocess.run(resume, env=source_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "after epoch 2" in done.stderr
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_done"] == 3 and summary["ranks"] == 1


def test_hung_rank_times_out_with_a_clear_error_and_two_ranks_resume(fmnist_root, tmp_path):
    out = tmp_path / "runs"
    args = _train_args(fmnist_root, out, "hang", "distributed.timeout=3")
    began = time.monotonic()
    hung = torchrun(2, args, _fault("hang", STEPS_PER_EPOCH + 1), 90)
    assert hung.returncode != 0
    assert time.monotonic() - began < 60
    assert "mwnet: error: rank 0 lost contact with the other ranks (Timed out" in hung.stderr
    run_dir = out / "hang"
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]

    # As a user would after a timeout: a longer one to continue with (3 s only served to end
    # the hang quickly; a busy machine can take longer than that between collectives)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.distributed.timeout = 120
    OmegaConf.save(config, run_dir / "config.yaml")
    resume = ["train", "--resume", str(run_dir), "--allow-change", "distributed.timeout"]
    done = torchrun(2, [*resume, "--quiet"], source_env(), 120)
    assert done.returncode == 0, done.stderr
    assert "after epoch 1 on 2 ranks" in done.stderr
    assert [p.name for p in out.iterdir()] == ["hang"]
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert done.stdout.count("test accuracy") == 1  # printed once, by rank 0
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_done"] == 3 and summary["ranks"] == 2
    assert (run_dir / "accuracy.png").is_file() and (run_dir / "sample_weights.csv").is_file()
    # rank 0 wrote the model file; every rank held the same model, so it is any rank's
    from mwnet import load_model

    assert load_model(run_dir).fields["training"]["epochs"] == 3
