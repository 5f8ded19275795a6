"""Self-paced learning and MentorNet's curricula under torchrun: their thresholds come from
the whole batch's losses, which every rank gathers, so two ranks weigh every sample as one
process does and train to its parameters (MentorNet-DD's mentor, fitted on the trusted set
that every rank gathers, too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dist_workers import rerun_on_two_threads, train_on_two_ranks_and_one
from rounding import assert_close_or_within_spread

from mwnet.run import load_checkpoint, read_jsonl
from mwnet.run.signals import SIGNALS_FILE, SampleSignals

pytestmark = pytest.mark.distributed

OPTIONS = {
    "self-paced": ["method.self_paced.start_fraction=0.5"],
    "mentornet-pd": ["method.mentornet.burn_in_epochs=1", "method.mentornet.percentile=0.5"],
    "mentornet-dd": [
        "method.mentornet.burn_in_epochs=1",
        "method.mentornet.percentile=0.5",
        "method.mentornet_dd.mentor_steps=50",
    ],
}
SMOOTH = {"mentornet-dd"}
"""Methods whose weights are a smooth function of the losses, not a decision."""


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_two_ranks_weigh_and_train_as_one_process(method, fmnist_root, tmp_path):
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
        f"method.name={method}",
        *OPTIONS[method],
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    # The parameters are sums in another order: bounded by the one process's own spread
    # under another thread count (see test_co_teaching_ranks.py).
    rerun_on_two_threads(args)
    one, _ = SampleSignals.load(tmp_path / "one" / SIGNALS_FILE)
    two, _ = SampleSignals.load(tmp_path / "two" / SIGNALS_FILE)
    rerun, _ = SampleSignals.load(tmp_path / "one-2-threads" / SIGNALS_FILE)
    np.testing.assert_array_equal(two.weight_count.numpy(), one.weight_count.numpy())
    for name in ("weight_sum", "last_weight"):
        got, want = getattr(two, name), getattr(one, name)
        if method in SMOOTH:
            # a weight smooth in the loss moves with the losses' and the mentor's rounding
            # (measured: 6e-7 of a sum of weights), within the loss's bound; the rank's
            # own percentile instead of the global batch's moves it by 1e-3 and more
            assert_close_or_within_spread(got, want, [getattr(rerun, name)], 1e-5, 1e-6, name)
        else:
            # A threshold is a decision on the gathered losses, equal to the one process's
            # up to rounding far below the gaps between them: the same samples are weighed
            # alike.
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert float(one.weight_sum.min()) < float(one.weight_sum.max())  # the weights vary
    records = [read_jsonl(tmp_path / n / "metrics.jsonl") for n in ("one", "two", "one-2-threads")]
    losses = [torch.tensor([r["train_loss"] for r in rs]) for rs in records]
    assert_close_or_within_spread(losses[1], losses[0], [losses[2]], 0, 1e-5, "train_loss")
    states = [
        load_checkpoint(tmp_path / n / "checkpoint.pt") for n in ("one", "two", "one-2-threads")
    ]
    for k, v in states[0]["model"].items():
        assert_close_or_within_spread(
            states[1]["model"][k], v, [states[2]["model"][k]], 1e-4, 1e-6, k
        )
    if method.startswith("mentornet"):
        assert states[1]["method"]["threshold"] == pytest.approx(
            states[0]["method"]["threshold"], rel=1e-5
        )
    if method == "mentornet-dd":  # fitted on the gathered trusted losses: one mentor
        mentors = [s["method"]["mentor"] for s in states]
        for k, v in mentors[0].items():
            assert_close_or_within_spread(mentors[1][k], v, [mentors[2][k]], 1e-4, 1e-6, k)
