"""Under torchrun, rank 0 holds the run directory and every rank gets its verdict: a held
directory ends the job at once (no rank waits for one that quit), and a resume checks the
config on every rank alike."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_workers import source_env, torchrun
from reliability import covers

from mwnet.run import read_json, read_jsonl
from mwnet.run.lock import RunLock

pytestmark = pytest.mark.distributed


def _first_epoch(root: Path, out: Path) -> Path:
    args = [
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
        "optim.epochs=1",
        f"out_dir={out}",
        "name=r",
        "device=cpu",
        "threads=1",
    ]
    cmd = [sys.executable, "-m", "mwnet", *args]
    done = subprocess.run(cmd, env=source_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out / "r"


@covers(
    "mixed runs",
    "torchrun --resume of a run directory another process holds",
    "every rank exits with 'RUN is in use by mwnet pid N', at once; nothing is written",
)
@covers(
    "mixed runs",
    "torchrun --resume after optim.epochs was raised, with --allow-change optim.epochs",
    "the two ranks continue the run to the new epoch count",
)
def test_held_directory_ends_every_rank_and_allowed_change_resumes(fmnist_root, tmp_path):
    run_dir = _first_epoch(fmnist_root, tmp_path)
    resume = ["train", "--resume", str(run_dir), "--quiet"]
    began = time.monotonic()
    with RunLock(run_dir):
        busy = torchrun(2, resume, source_env(), 90)
    assert busy.returncode != 0 and time.monotonic() - began < 60
    assert busy.stderr.count(f"is in use by mwnet pid {os.getpid()}") == 2, busy.stderr
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]

    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2", 1))
    refused = torchrun(2, resume, source_env(), 90)
    assert refused.returncode != 0
    assert refused.stderr.count("optim.epochs (1 -> 2)") == 2, refused.stderr
    done = torchrun(2, [*resume, "--allow-change", "optim.epochs"], source_env(), 120)
    assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_done"] == 2 and summary["ranks"] == 2 and summary["finished"]
