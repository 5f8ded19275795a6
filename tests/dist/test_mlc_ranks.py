"""MLC under data parallelism: the trusted batch is split by global position, the virtual
step, the meta loss and the correction net's gradient are summed over ranks, so two ranks
hold one correction net and train as one process does."""

from __future__ import annotations

import zlib

import pytest
import torch
from dist_workers import train_method_on_ranks
from rounding import assert_close_or_within_spread

from mwnet.methods.mlc import LabelCorrectionNet
from mwnet.train import loop
from mwnet.train.config import load_config

pytestmark = pytest.mark.distributed


def _overrides(root, out, hypergrad: str, name: str, threads: int = 1) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.subset=200",
        "data.meta_per_class=3",
        "data.batch_size=50",
        # shards of 5: rank 0 holds global positions 0-4 (2 for the meta loss, 3 to train),
        # rank 1 positions 5-9 (3 and 2): unequal shares, offsets that matter
        "data.meta_batch_size=10",
        "data.augment=false",
        "data.noise=uniform",
        "data.noise_rate=0.4",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.lr=0.1",
        "optim.epochs=2",
        "method.name=mlc",
        f"method.mlc.hypergrad={hypergrad}",
        "method.mlc.lr=0.003",
        "device=cpu",
        f"threads={threads}",
        f"out_dir={out}",
        f"name={name}",
    ]


def _one_process(root, out, hypergrad: str, name: str, threads: int) -> dict:
    threads_before = torch.get_num_threads()
    try:
        trainer, _ = loop.start(
            load_config(None, _overrides(root, out, hypergrad, name, threads)), quiet=True
        )
        trainer.fit()
    finally:
        torch.set_num_threads(threads_before)
    model = {k: v.detach().clone() for k, v in trainer.exp.model.state_dict().items()}
    return {"model": model, "method": trainer.exp.method.state_dict()}


def test_two_ranks_hold_one_correction_net_and_train_as_one_process(fmnist_root, tmp_path):
    hypergrad = "reverse"  # the authors'; fast shares its meta loss and sums (tested in core)
    ranks = train_method_on_ranks(
        _overrides(fmnist_root, tmp_path, hypergrad, "two"), 2, tmp_path / "ranks"
    )
    one = _one_process(fmnist_root, tmp_path, hypergrad, "one", threads=1)
    # the one process again on 2 threads: only the blocking of its sums changes, so its
    # distance from the 1-thread run is this CPU's float32 rounding spread over the run
    rerun = _one_process(fmnist_root, tmp_path, hypergrad, "one-2-threads", threads=2)
    corrector = ranks[0]["method"]["corrector"]
    for k, v in corrector.items():  # the same summed meta gradient on both ranks
        assert torch.equal(ranks[1]["method"]["corrector"][k], v), k
    for k, v in ranks[0]["model"].items():
        assert torch.equal(ranks[1]["model"][k], v), k
    # Measured on this CPU: the ranks land 1.8e-6 from the one process on the correction
    # net (scale 0.39; the 2-thread rerun 2.3e-6: Adam turns the gradients' last bits on
    # near-zero entries into steps) and 3e-8 on the model (rerun 1.5e-8), inside the
    # bounds below. Planted: a split by each rank's own positions moves the net by 0.04
    # and the model by 0.24; meta gradients left unsummed make the ranks' nets differ by
    # 0.04 (the equality above) and move the model by 0.12.
    initial = LabelCorrectionNet(16, 10, seed=zlib.crc32(b"mlc/0")).state_dict()  # seed 0
    assert any(float((initial[k] - v).abs().max()) > 1e-3 for k, v in corrector.items())
    for k, v in one["method"]["corrector"].items():
        again = rerun["method"]["corrector"][k]
        assert_close_or_within_spread(corrector[k], v, [again], 1e-4, 1e-6, f"corrector.{k}")
    for k, v in one["model"].items():
        assert_close_or_within_spread(ranks[0]["model"][k], v, [rerun["model"][k]], 1e-4, 1e-6, k)
