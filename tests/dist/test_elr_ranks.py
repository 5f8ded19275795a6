"""ELR under data parallelism: each rank updates its shard's targets and the ranks exchange
them every step, so both ranks hold one table, the one process's."""

from __future__ import annotations

import pytest
import torch
from elr_workers import run_elr_on_ranks
from rounding import assert_close_or_within_spread

from mwnet.run import load_checkpoint
from mwnet.train import loop
from mwnet.train.config import load_config

pytestmark = pytest.mark.distributed


def _overrides(root, out, name: str, threads: int = 1) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.subset=105",
        "data.meta_per_class=2",
        "data.batch_size=20",  # 105 samples: the last batch of 5 splits 3 / 2
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.lr=0.1",
        "optim.epochs=2",
        "method.name=elr",
        f"threads={threads}",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
    ]


def test_two_ranks_hold_one_target_table_the_one_processs(fmnist_root, tmp_path):
    ranks = run_elr_on_ranks(_overrides(fmnist_root, tmp_path, "two"), 2, tmp_path / "ranks")
    assert torch.equal(ranks[0]["targets"], ranks[1]["targets"])
    assert ranks[0]["bytes"]["targets"] > 0
    two = ranks[0]["targets"]
    assert len(two) == 105 and bool((two.sum(1) > 0).all())  # every sample's row was written

    one, _ = loop.start(load_config(None, _overrides(fmnist_root, tmp_path, "one")), quiet=True)
    one.fit()
    # The one process again on 2 threads: only the blocking of its sums changes, so its
    # distance from the 1-thread run is this CPU's float32 rounding spread after these 10
    # steps. The ranks sum each gradient in two shards and land within rounding of the
    # one process; a row left out of the exchange would be zero on one rank, and a wrong
    # row 1e-2 off (targets are probabilities of size 0.1).
    threads = torch.get_num_threads()
    try:
        rerun, _ = loop.start(
            load_config(None, _overrides(fmnist_root, tmp_path, "rerun", threads=2)), quiet=True
        )
        rerun.fit()
    finally:
        torch.set_num_threads(threads)
    reference = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["method"]["targets"]
    again = load_checkpoint(tmp_path / "rerun" / "checkpoint.pt")["method"]["targets"]
    assert_close_or_within_spread(two, reference, [again], 1e-5, 1e-6, "targets")
    for k, v in one.exp.model.state_dict().items():
        got, other = ranks[0]["model"][k], rerun.exp.model.state_dict()[k]
        assert_close_or_within_spread(got, v, [other], 1e-4, 1e-6, k)
