"""Without a clean set, scoring every training sample is sharded over the ranks."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
from dist_workers import train_on_two_ranks_and_one
from scoring_workers import run_rank, score_here

from mwnet.run import read_jsonl

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_scores_equal_one_process(tmp_path, world):
    context = mp.start_processes(
        run_rank,
        args=(world, str(tmp_path / "store"), str(tmp_path)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        assert time.monotonic() < deadline, "the ranks did not finish"
    single = score_here(None)
    for rank in range(world):
        got = torch.load(tmp_path / f"scores{rank}.pt")
        # each sample's float32 loss comes from its own rows of every product; only the
        # batch shapes differ (the kernels' blocking): bit-identical on AMD EPYC, and 1e-6
        # is 8 float32 ulps (u = 2^-24) of each score for a kernel that blocks otherwise
        torch.testing.assert_close(got, single, rtol=1e-6, atol=1e-7)
    assert single.unique().numel() == single.numel()  # every sample scored, none repeated


def test_label_correction_without_a_clean_set_under_torchrun(fmnist_root, tmp_path):
    """Two ranks pick the same pseudo-meta sets as one process and train alike."""
    args = [
        "train",
        "--quiet",
        f"data.root={fmnist_root}",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=20",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        "data.meta_source=auto",
        "data.pseudo_meta_per_class=3",
        "data.augment=false",
        "model.name=mlp",
        "optim.epochs=3",
        "optim.lr=0.05",
        "method.name=cmwnet-sl",
        "method.warmup_epochs=1",
        "method.mwnet.normalize=mean",
        "method.teacher.decay=0.8",
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    one_records = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two_records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    for a, b in zip(one_records, two_records, strict=True):
        assert a.get("meta_size") == b.get("meta_size")
        assert a.get("meta_precision") == b.get("meta_precision")
        # float32 runs of 3 epochs: measured 6e-8 apart on AMD EPYC (a 2-thread rerun of
        # the one process moves it as far), 1700x inside the bound; a rank training on a
        # wrong pseudo-meta set moves the loss by 1e-2 and more
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
    assert one_records[-1]["meta_size"] == 30
