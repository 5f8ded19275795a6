"""Choices and refusals of a data-parallel launch, checked without starting any process."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mwnet.distributed import (
    DataParallel,
    FaultHook,
    choose_backend,
    lost_contact,
    rank_device,
    start,
)
from mwnet.train.config import ConfigError, load_config
from mwnet.train.experiment import check_shards, use_sync_bn


def _parallel(world: int = 2, rank: int = 0) -> DataParallel:
    return DataParallel(rank, world, rank, torch.device("cpu"), "gloo", reducer=None)  # type: ignore[arg-type]


def test_shards_are_contiguous_and_cover_the_batch():
    batch = torch.arange(11)
    shards = [_parallel(3, r).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(shards), batch)
    assert [len(s) for s in shards] == _parallel(3).shard_sizes(11) == [4, 4, 3]


@pytest.mark.parametrize(
    ("overrides", "n_train", "world", "message"),
    [
        (["data.batch_size=50"], 200, 3, "data.batch_size=50 is not divisible by the 3 ranks"),
        (["data.meta_batch_size=7"], 200, 2, "data.meta_batch_size=7 is not divisible"),
        (["data.batch_size=64"], 194, 4, "last training batch of each epoch has 2 sample"),
    ],
)
def test_batches_that_cannot_be_shared_are_refused(overrides, n_train, world, message):
    cfg = load_config("fmnist-flip2-40", ["data.meta_batch_size=64", *overrides])
    data = SimpleNamespace(train_labels=range(n_train), meta_labels=range(100))
    with pytest.raises(ConfigError, match=message):
        check_shards(cfg, data, world)
    check_shards(cfg, SimpleNamespace(train_labels=range(200 * world), meta_labels=[]), 1)


def test_a_partial_last_batch_with_a_sample_per_rank_is_fine():
    cfg = load_config("fmnist-flip2-40", ["data.batch_size=50", "data.meta_batch_size=50"])
    check_shards(cfg, SimpleNamespace(train_labels=range(203), meta_labels=range(50)), 2)


def test_sync_bn_on_the_cpu_names_cuda_and_nccl():
    """torch's SyncBatchNorm raises on CPU tensors ("expected input tensor to be on GPU");
    the run refuses up front instead, naming what it needs and the alternative."""
    cfg = load_config(
        "fmnist-flip2-40", ["distributed.sync_bn=true", "method.mwnet.hypergrad=head"]
    )
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ConfigError, match="needs CUDA devices and the nccl backend"):
        use_sync_bn(cfg, model, _parallel())
    assert use_sync_bn(cfg, model, None) is model  # one process: nothing to synchronise


@pytest.mark.parametrize("method", [["method.mwnet.hypergrad=fast"], ["method.name=l2rw"]])
def test_sync_bn_refuses_meta_gradients_it_cannot_differentiate(method):
    with pytest.raises(ConfigError, match=r"torch\.nn\.SyncBatchNorm does not support"):
        load_config("fmnist-flip2-40", ["distributed.sync_bn=true", *method])
    load_config("fmnist-flip2-40", ["distributed.sync_bn=true", "method.name=ce"])


def test_devices_and_backends():
    assert rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ValueError, match="every rank on the same device"):
        rank_device("cuda:1", 0)
    assert choose_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(ValueError, match="nccl needs CUDA devices"):
        choose_backend("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"distributed\.backend=.mpi. is not valid"):
        load_config("fmnist-flip2-40", ["distributed.backend=mpi"])
    with pytest.raises(ConfigError, match=r"distributed\.timeout must be > 0"):
        load_config("fmnist-flip2-40", ["distributed.timeout=0"])


def test_start_outside_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node=N -m mwnet train"):
        start("cpu")


def test_lost_contact_recognises_collective_failures():
    gloo = "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv"
    assert lost_contact(RuntimeError(gloo))
    assert lost_contact(torch.distributed.DistBackendError("NCCL watchdog"))
    assert not lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_contact(ValueError("timeout"))


def test_fault_hook_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("MWNET_TEST_FAULT", raising=False)
    assert FaultHook.from_env() is None
    monkeypatch.setenv("MWNET_TEST_FAULT", "exit")
    monkeypatch.setenv("MWNET_TEST_FAULT_STEP", "7")
    assert FaultHook.from_env() == FaultHook("exit", 1, 7)
    FaultHook("exit", 1, 7).at(0, 7)  # another rank, or another step: nothing happens
    FaultHook("exit", 1, 7).at(1, 6)
