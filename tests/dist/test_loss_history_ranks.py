"""A weighting net that reads each sample's loss sequence (method.mwnet.inputs with
loss_history) under torchrun: each rank writes the sequences of its shard of every batch,
one all-gather a step writes every rank's rows on every rank, and two ranks end where one
process ends: the same samples seen, the same sequences, the same model and net."""

from __future__ import annotations

import pytest
import torch
from dist_workers import rerun_on_two_threads, train_on_two_ranks_and_one
from rounding import assert_close_or_within_spread

from mwnet.run import load_checkpoint, read_jsonl

pytestmark = pytest.mark.distributed

HISTORY = 3


def test_two_ranks_keep_the_one_process_loss_sequences(fmnist_root, tmp_path):
    args = [
        "train",
        "--preset",
        "fmnist-flip2-40",
        "--quiet",
        f"data.root={fmnist_root}",
        "data.meta_per_class=5",
        "data.subset=120",
        "data.batch_size=40",
        "data.meta_batch_size=50",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.epochs=3",  # three visits each: every sequence has moved twice
        "method.mwnet.inputs=[loss,loss_history,loss_rank]",
        f"method.mwnet.history={HISTORY}",
        "method.mwnet.net_lr=0.01",
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    # The one process again on 2 threads: only the blocking of its sums changes, so its
    # distance from the 1-thread run is this CPU's float32 rounding spread (see
    # tests/rounding.py), which widens the literal bounds below where a CPU carries
    # rounding farther. Measured on AMD EPYC (largest entry): the ranks differ from the one
    # process by 1.5e-8 in the model, 1.4e-7 in the weighting net (scale 0.36) and 4.8e-7
    # in the sequences (scale 3.2, two float32 ulps), the 2-thread rerun by 1.5e-8, 1.1e-7
    # and 2.4e-7: over 100x inside the literal bounds 1e-4·|x| + 1e-6.
    rerun_on_two_threads(args)
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    rerun = load_checkpoint(tmp_path / "one-2-threads" / "checkpoint.pt")
    sequences = one["method"]["dynamics"]
    # every sample's row, also those rank 1 trained on (a rank that wrote only its own
    # shard's rows would leave half of them unseen here)
    assert sequences["seen"].all()
    assert torch.equal(two["method"]["dynamics"]["seen"], sequences["seen"])
    table = sequences["table"]
    assert table.shape[1] == HISTORY and bool((table[:, 0] != table[:, 1]).all())
    assert_close_or_within_spread(
        two["method"]["dynamics"]["table"],
        table,
        [rerun["method"]["dynamics"]["table"]],
        1e-4,
        1e-6,
        "loss sequences",
    )
    for k, v in one["model"].items():
        assert_close_or_within_spread(two["model"][k], v, [rerun["model"][k]], 1e-4, 1e-6, k)
    for k, v in one["method"]["weight_net"].items():
        got, again = two["method"]["weight_net"][k], rerun["method"]["weight_net"][k]
        assert_close_or_within_spread(got, v, [again], 1e-4, 1e-6, f"weight_net.{k}")
    losses = [
        torch.tensor([r["train_loss"] for r in read_jsonl(tmp_path / name / "metrics.jsonl")])
        for name in ("one", "two", "one-2-threads")
    ]
    assert_close_or_within_spread(losses[1], losses[0], [losses[2]], 0, 1e-5, "train_loss")
