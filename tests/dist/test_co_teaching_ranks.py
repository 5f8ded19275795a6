"""Co-teaching under torchrun: two ranks select the small-loss samples over the global batch,
so they keep exactly the samples one process keeps, and train both networks as it does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dist_workers import rerun_on_two_threads, train_on_two_ranks_and_one
from rounding import assert_close_or_within_spread

from mwnet.run import load_checkpoint, read_jsonl
from mwnet.run.signals import SIGNALS_FILE, SampleSignals

pytestmark = pytest.mark.distributed


def test_two_ranks_keep_and_train_what_one_process_does(fmnist_root, tmp_path):
    args = [
        "train",
        "--quiet",
        f"data.root={fmnist_root}",
        "data.download=false",
        "data.subset=95",  # batches of 30, 30, 30 and 5: the last shards are 3 and 2
        "data.meta_per_class=2",
        "data.batch_size=30",
        "data.augment=false",
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.lr=0.1",
        "optim.epochs=3",
        "method.name=co-teaching",
        "method.co_teaching.forget_rate=0.4",
        "method.co_teaching.num_gradual=2",
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    # The selection is a decision, not a sum: each rank sorts the same gathered losses, and
    # those are the one process's up to rounding far below the gaps between sorted losses,
    # so every step keeps the same samples. Each sample's weights summed over the run, its
    # last weight, and the epochs' mean weights are therefore equal exactly.
    one, _ = SampleSignals.load(tmp_path / "one" / SIGNALS_FILE)
    two, _ = SampleSignals.load(tmp_path / "two" / SIGNALS_FILE)
    for name in ("weight_sum", "weight_count", "last_weight"):
        np.testing.assert_array_equal(getattr(two, name).numpy(), getattr(one, name).numpy())
    assert float(one.weight_sum.min()) > 0 and float(one.weight_sum.max()) == 3  # picks vary
    one_records = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two_records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    for key in ("mean_weight", "mean_weight_clean", "mean_weight_corrupted"):
        assert [r[key] for r in two_records] == [r[key] for r in one_records]
    # The parameters are sums over the batch in another order (two shards, summed over the
    # ranks). The one process again on 2 threads changes nothing but the blocking of its
    # sums: its distance from the 1-thread run is this CPU's rounding spread after these
    # 12 steps, and the literal bounds widen to 10x that spread where a CPU carries
    # rounding farther.
    rerun_on_two_threads(args)
    rerun_records = read_jsonl(tmp_path / "one-2-threads" / "metrics.jsonl")
    losses = [torch.tensor([r["train_loss"] for r in rs]) for rs in (one_records, two_records)]
    rerun_losses = torch.tensor([r["train_loss"] for r in rerun_records])
    assert_close_or_within_spread(losses[1], losses[0], [rerun_losses], 0, 1e-5, "train_loss")
    one_state, two_state, rerun = (
        load_checkpoint(tmp_path / name / "checkpoint.pt")
        for name in ("one", "two", "one-2-threads")
    )
    for k, v in one_state["model"].items():
        got, again = two_state["model"][k], rerun["model"][k]
        assert_close_or_within_spread(got, v, [again], 1e-4, 1e-6, k)
    for k, v in one_state["method"]["peer"].items():
        got, again = two_state["method"]["peer"][k], rerun["method"]["peer"][k]
        assert_close_or_within_spread(got, v, [again], 1e-4, 1e-6, f"peer.{k}")
