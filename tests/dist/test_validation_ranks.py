"""The validation pass under data parallelism: sharded over the ranks like the test pass,
gathered, and equal to one process's."""

from __future__ import annotations

import pytest
import torch
from dist_workers import _spawn, train_on_two_ranks_and_one
from validation_workers import evaluate_here, run_rank

from mwnet.run import read_json, read_jsonl
from mwnet.train.config import load_config
from mwnet.train.experiment import build_model, prepare_data

pytestmark = pytest.mark.distributed

VAL = 37  # odd: the ranks' shards differ in size


def _overrides(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        f"data.val_size={VAL}",
        "data.augment=false",
        "data.eval_batch_size=16",
        "data.batch_size=60",  # divisible by 2 and 3 ranks
        "data.meta_batch_size=30",
        "model.name=mlp",
        "eval_train=false",
        "method.name=ce",
        "device=cpu",
        "threads=1",
    ]


@pytest.mark.parametrize("world", [2, 3])
def test_the_sharded_validation_pass_equals_one_process(fmnist_root, tmp_path, world):
    overrides = _overrides(fmnist_root)
    cfg = load_config(None, overrides)
    torch.manual_seed(5)
    model_file = tmp_path / "model.pt"
    torch.save(build_model(cfg, prepare_data(cfg)).state_dict(), model_file)
    single = evaluate_here(overrides, str(model_file), None)
    ranks = _spawn(run_rank, (overrides, str(model_file)), world, tmp_path, 120)
    assert 0 < single["scores"]["val_acc"] < 100
    for result in ranks:
        assert result["scores"] == single["scores"]  # test and validation accuracy alike
    # each rank ran only its shard of the test and the validation set
    assert sum(r["seen"] for r in ranks) == single["seen"]
    assert max(r["seen"] for r in ranks) < single["seen"] * (1 / world + 0.1)


def test_two_ranks_under_torchrun_record_the_validation_of_one_process(fmnist_root, tmp_path):
    args = [
        "train",
        "--quiet",
        *[o for o in _overrides(fmnist_root) if not o.startswith(("eval_train", "method"))],
        "optim.epochs=2",
        "optim.lr=0.05",
        "method.name=mwnet",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    one_acc = [r["val_acc"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    two_acc = [r["val_acc"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    # the same split; the models differ only by the float rounding of summed gradients
    assert read_json(tmp_path / "two" / "summary.json")["val_samples"] == VAL
    for a, b in zip(one_acc, two_acc, strict=True):
        assert abs(a - b) <= 100 / VAL + 1e-6  # at most one sample apart
