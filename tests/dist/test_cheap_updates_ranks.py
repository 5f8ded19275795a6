"""The partial virtual step and the update schedule under torchrun: two ranks decide and
train as one process does (the freezing rule compares the curve on fixed losses, so every
rank freezes at the same epoch)."""

from __future__ import annotations

import pytest
import torch
from dist_workers import rerun_on_two_threads, train_on_two_ranks_and_one
from rounding import assert_close_or_within_spread

from mwnet.run import load_checkpoint, read_jsonl

pytestmark = pytest.mark.distributed


def test_partial_step_with_a_schedule_and_freezing_equals_one_process(fmnist_root, tmp_path):
    args = [
        "train",
        "--preset",
        "fmnist-flip2-40",
        "--quiet",
        f"data.root={fmnist_root}",
        "data.meta_per_class=5",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=50",
        "model.name=mlp",
        "model.options.hidden=[16,16]",
        "optim.epochs=4",
        "method.mwnet.hypergrad=partial",
        "method.mwnet.partial=net.3,net.5",  # the second hidden layer and the classifier
        "method.mwnet.meta_interval_schedule=2@1",
        "method.mwnet.freeze_tolerance=0.5",
        "method.mwnet.net_lr=0.01",
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    # The one process again on 2 threads: nothing changes but the blocking of its sums, so
    # its distance from the 1-thread run is this CPU's float32 rounding spread after these
    # 16 steps. Measured on AMD EPYC: the ranks land 1.3x as far from the one process as
    # the 2-thread run does (weighting net 2.3e-7 vs 8.9e-8 of its 0.046 scale; losses
    # 1.8e-7 both), 19x inside the literal bounds below; the bounds widen to 10x the
    # spread where a CPU carries rounding farther.
    rerun_on_two_threads(args)
    one_records = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two_records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    rerun_records = read_jsonl(tmp_path / "one-2-threads" / "metrics.jsonl")
    frozen = [r["meta_loss"] is None for r in one_records]
    assert frozen == [r["meta_loss"] is None for r in two_records]
    assert frozen[0] is False and frozen[-1] is True  # it learned, then froze
    losses = [torch.tensor([r["train_loss"] for r in rs]) for rs in (one_records, two_records)]
    rerun_losses = torch.tensor([r["train_loss"] for r in rerun_records])
    assert_close_or_within_spread(losses[1], losses[0], [rerun_losses], 0, 1e-5, "train_loss")
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    two_state = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    rerun = load_checkpoint(tmp_path / "one-2-threads" / "checkpoint.pt")
    assert one["method"]["updates"]["frozen_at"] == two_state["method"]["updates"]["frozen_at"]
    for k, v in one["model"].items():
        assert_close_or_within_spread(two_state["model"][k], v, [rerun["model"][k]], 1e-4, 1e-6, k)
    for k, v in one["method"]["weight_net"].items():
        got, again = two_state["method"]["weight_net"][k], rerun["method"]["weight_net"][k]
        assert_close_or_within_spread(got, v, [again], 1e-4, 1e-6, f"weight_net.{k}")
