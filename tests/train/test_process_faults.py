"""Real processes: a second writer is turned away, SIGTERM stops like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_data import write_idx
from reliability import covers
from test_loop import tiny_overrides

from mwnet.run import load_checkpoint, read_jsonl

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and flock")
EPOCHS = 12  # of about 1 s each, so the run is still going when the others have failed


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _mwnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "mwnet", *args]


@covers(
    "mixed runs",
    "two mwnet train processes on one run directory (a --resume, or a start with the same "
    "name=, while the first trains)",
    "the second exits 2 at once: 'RUN is in use by mwnet pid N ...'; the first's metrics "
    "stay 1, 2, 3, ...",
)
@covers(
    "interrupts",
    "SIGTERM (a batch scheduler's stop) in the middle of an epoch",
    "'stopped by SIGTERM; finished epochs are saved. Continue with: mwnet train --resume "
    "RUN', exit 143; the checkpoint holds every finished epoch",
)
def test_second_writer_refused_and_sigterm_stops_like_ctrl_c(fmnist_root, tmp_path):
    run_dir = tmp_path / "busy"
    overrides = tiny_overrides(fmnist_root, tmp_path, "busy", "ce")
    overrides = [o for o in overrides if not o.startswith(("data.subset", "optim.epochs"))]
    overrides += ["data.batch_size=5", f"optim.epochs={EPOCHS}", "threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        _mwnet("train", "--preset", "fmnist-flip2-40", "--quiet", *overrides),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and read_jsonl(metrics)):
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "no epoch saved within 120 s"
        time.sleep(0.05)
    second = [
        _mwnet("train", "--resume", str(run_dir), "--quiet"),
        _mwnet("train", "--preset", "fmnist-flip2-40", "--quiet", *overrides),
    ]
    others = [subprocess.Popen(a, env=env, stderr=subprocess.PIPE, text=True) for a in second]
    for other in others:
        _, other_err = other.communicate(timeout=60)
        assert other.returncode == 2, other_err
        assert f"is in use by mwnet pid {first.pid} on " in other_err, other_err
    assert first.poll() is None, "the first run ended before it could be stopped mid-way"
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    done_epochs = [r["epoch"] for r in read_jsonl(metrics)]
    assert 1 <= len(done_epochs) < EPOCHS and done_epochs == list(range(1, len(done_epochs) + 1))
    assert "stopped by SIGTERM; finished epochs are saved" in err
    assert f"mwnet train --resume {run_dir}" in err and "Traceback" not in err
    # what the resume hint promises: a whole checkpoint of every finished epoch
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == len(done_epochs)
