"""The partial virtual step and the update schedule under torchrun: two ranks decide and
train as one process does (the freezing rule compares the curve on fixed losses, so every
rank freezes at the same epoch)."""

from __future__ import annotations

import pytest
import torch
from dist_workers import train_on_two_ranks_and_one

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
    one_records = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two_records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    frozen = [r["meta_loss"] is None for r in one_records]
    assert frozen == [r["meta_loss"] is None for r in two_records]
    assert frozen[0] is False and frozen[-1] is True  # it learned, then froze
    for a, b in zip(one_records, two_records, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    two_state = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert one["method"]["updates"]["frozen_at"] == two_state["method"]["updates"]["frozen_at"]
    for part in ("model",):
        for k, v in one[part].items():
            torch.testing.assert_close(two_state[part][k], v, rtol=1e-4, atol=1e-6, msg=k)
    for k, v in one["method"]["weight_net"].items():
        torch.testing.assert_close(
            two_state["method"]["weight_net"][k], v, rtol=1e-4, atol=1e-6, msg=k
        )
