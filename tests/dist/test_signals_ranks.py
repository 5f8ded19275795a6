"""Per-sample signals on 2 ranks: the evaluation pass over the training set is sharded
and gathered, and the training steps' losses and weights are gathered, so a 2-rank run
records what one process records (up to float rounding of the summed gradients)."""

from __future__ import annotations

import numpy as np
import pytest
from dist_workers import train_on_two_ranks_and_one

from mwnet.run.signals import SIGNALS_FILE, SampleSignals

pytestmark = pytest.mark.distributed


def test_two_ranks_record_the_signals_of_one_process(fmnist_root, tmp_path):
    args = [
        "train",
        "--quiet",
        f"data.root={fmnist_root}",
        "data.subset=203",  # odd: the shards of the evaluation pass differ in size
        "data.batch_size=50",
        "data.meta_batch_size=20",
        "data.meta_per_class=3",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        "data.augment=false",
        "data.eval_batch_size=64",
        "model.name=mlp",
        "optim.epochs=2",
        "optim.lr=0.05",
        "method.name=mwnet",
        "device=cpu",
        "threads=1",
        f"out_dir={tmp_path}",
    ]
    train_on_two_ranks_and_one(args, tmp_path)
    one, one_extra = SampleSignals.load(tmp_path / "one" / SIGNALS_FILE)
    two, two_extra = SampleSignals.load(tmp_path / "two" / SIGNALS_FILE)
    assert one.epochs == two.epochs == 2
    np.testing.assert_array_equal(one_extra["index"], two_extra["index"])
    np.testing.assert_array_equal(one.labels.numpy(), two.labels.numpy())
    np.testing.assert_array_equal(one.loss_count.numpy(), two.loss_count.numpy())
    np.testing.assert_array_equal(one.weight_count.numpy(), two.weight_count.numpy())
    for name in ("loss", "weight", "confidence", "margin"):
        np.testing.assert_allclose(two.mean(name), one.mean(name), rtol=1e-4, atol=1e-5)
    # predictions may only differ where a sample sits on a decision boundary
    assert (one.agree_count != two.agree_count).float().mean() < 0.01
    assert (one.last_pred != two.last_pred).float().mean() < 0.01
