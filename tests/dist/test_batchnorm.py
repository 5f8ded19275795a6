"""BatchNorm on 2 ranks through the real training loop: during an epoch each rank's running
statistics follow its own shard of every batch; after the epoch every rank, and the
checkpoint, holds their average. A 2-rank run resumed from its checkpoint ends where an
uninterrupted one ends.

Each epoch here is one step (``data.subset`` = ``data.batch_size``), so what each rank's
shard produces can be computed in this process, independently of the loop: the step's
forward runs on the model as the previous epoch left it (the initial model, then the
checkpoint of epoch 1), on the rank's half of the epoch's one batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_workers import run_loop_on_ranks
from same_state import assert_identical, training_state

from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train.config import load_config_file
from mwnet.train.experiment import build_experiment

pytestmark = pytest.mark.distributed

PRESET = "fmnist-flip2-40"  # cnn_small (two conv-BatchNorm blocks, dropout) and mwnet
WORLD = 2
STATS = ("running_mean", "running_var")
TIMING = ("epoch_time", "wall_time")


def _overrides(root: Path, out: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=5",
        "data.subset=64",
        "data.batch_size=64",  # one step per epoch, a shard of 32 images per rank
        "data.meta_batch_size=50",
        "optim.epochs=2",
        f"out_dir={out}",
        "device=cpu",
    ]


@pytest.fixture(scope="module")
def runs(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """On 2 ranks: run ``straight`` (2 epochs); run ``cut`` for 1 epoch, then resumed from
    its checkpoint to its end."""
    tmp = tmp_path_factory.mktemp("batchnorm")
    out = tmp / "runs"
    ranks = run_loop_on_ranks(PRESET, _overrides(fmnist_root, out), WORLD, tmp)
    return {"out": out, "ranks": ranks, "after_one": load_checkpoint(out / "cut/checkpoint-1.pt")}


def _shard_statistics(model: torch.nn.Module, state: dict, x: torch.Tensor) -> list[dict]:
    """The running statistics each rank's shard of ``x`` leaves in a model at ``state``."""
    per_rank = []
    for shard in x.tensor_split(WORLD):
        model.load_state_dict(state)
        model.train()
        with torch.no_grad():
            model(shard)
        per_rank.append({k: v.clone() for k, v in model.state_dict().items() if k.endswith(STATS)})
    return per_rank


def test_running_statistics_are_the_average_of_the_ranks_shards(runs: dict) -> None:
    out, ranks = runs["out"], runs["ranks"]
    exp = build_experiment(load_config_file(out / "cut" / "config.yaml"))
    assert len(exp.data.test_labels) == 50  # the generated files, not a real dataset
    assert len(exp.train_batches) == 1
    model = exp.model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    epochs = [
        (initial, runs["after_one"]["model"], [r["cut_end"] for r in ranks]),
        (
            runs["after_one"]["model"],
            load_checkpoint(out / "cut" / "checkpoint.pt")["model"],
            [r["resumed_end"] for r in ranks],
        ),
    ]
    assert any(k.endswith("running_var") for k in initial)
    for rank in ranks:  # every rank built the model this process built
        assert_identical(rank["cut_start"], initial, "initial model")

    for epoch, (before, saved, held) in enumerate(epochs, start=1):
        x, _, _ = next(iter(exp.train_batches))  # the epoch's one global batch
        shards = _shard_statistics(model, before, x)
        for key in shards[0]:
            # the ranks' shards disagree far beyond the tolerance below, so the statistics
            # of one rank alone, or a wrong mix of them, would show
            assert (shards[0][key] - shards[1][key]).abs().max() > 1e-4, (epoch, key)
            average = (shards[0][key] + shards[1][key]) / 2
            # the ranks ran this process's forward on the same shards, and the mean of two
            # (a + b) / 2 rounds alike in either order: bit-identical on AMD EPYC. 1e-5 is
            # 84 float32 ulps, room for kernels that block the per-channel sums of 32·H·W
            # terms otherwise (a pairwise sum errs by about log2(n) ulps, 15 here), 10x
            # under the shards' own disagreement just asserted
            torch.testing.assert_close(saved[key], average, rtol=1e-5, atol=1e-8)
        for rank, state in enumerate(held):  # every rank holds the checkpoint's state
            assert_identical(state, saved, f"epoch {epoch}, rank {rank}")
        assert all(int(v) == epoch for k, v in saved.items() if k.endswith("batches_tracked"))


def test_two_ranks_resume_to_the_same_final_state(runs: dict) -> None:
    out, ranks = runs["out"], runs["ranks"]
    assert [r["resumed_after"] for r in ranks] == [1, 1]
    want = load_checkpoint(out / "straight" / "checkpoint.pt")
    got = load_checkpoint(out / "cut" / "checkpoint.pt")
    assert want["epoch"] == got["epoch"] == 2
    for part in ("model", "optimizer", "method"):
        assert_identical(got[part], want[part], part)
    assert_identical(training_state(got), training_state(want), "checkpoint")
    for rank in range(WORLD):
        assert_identical(ranks[rank]["resumed_end"], want["model"], f"rank {rank}")
        assert_identical(ranks[rank]["straight_end"], want["model"], f"rank {rank}")

    def metrics(name: str) -> list[dict]:
        records = read_jsonl(out / name / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in TIMING} for r in records]

    assert [r["epoch"] for r in metrics("cut")] == [1, 2]
    assert metrics("cut") == metrics("straight")
