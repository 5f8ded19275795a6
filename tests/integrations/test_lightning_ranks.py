"""Under Lightning's DDP strategy (2 CPU processes, gloo), MetaWeighting ends where one
process ends on the union of the processes' batches, and DDP's own reducer all-reduces
nothing: every sum goes through mwnet's GradientReducer.

The two processes are started as torchrun starts them (``LOCAL_RANK`` set, so Lightning
launches none), forked from this one. Lightning gives each a ``DistributedSampler`` share
of the training loader, shuffled with seed 0 + epoch; MetaWeighting gives each a share of
the trusted loader (unshuffled, as the loader is). The one-process reference is
:class:`mwnet.methods.MetaWeightNet` on those global batches, which
tests/integrations/test_lightning.py shows a one-process Lightning fit equals bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from rounding import assert_states_within_order_noise, assert_within_order_noise

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.filterwarnings("ignore:You defined a `validation_step`"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

WORLD = 2
SETUP = {"data": {"n": 80, "n_meta": 40}, "batch": 10, "meta_batch": 5, "epochs": 2}
"""Per process: 4 steps of 10 samples an epoch, 5 trusted samples a step (4 a pass)."""
CASES = {
    "mwnet-fast-sum": {},
    "cmwnet-reverse-mean": {"class_aware": True, "hypergrad": "reverse", "normalize": "mean"},
}
REORDERINGS = (1, 2, 3)
"""Seeds of the one-process runs with the samples of every batch shuffled: how far the
order of the sums alone moves each result on this CPU (see tests/rounding.py)."""


@pytest.fixture(scope="module")
def lw():
    pytest.importorskip("lightning")
    import lightning_workers

    return lightning_workers


@pytest.fixture(scope="module")
def ranks(lw, tmp_path_factory) -> list[dict]:
    return lw.run_on_ranks(CASES, SETUP, WORLD, tmp_path_factory.mktemp("lightning_ranks"))


def _lightning_order(epoch: int):
    """The global order of the training samples in ``epoch`` under Lightning's DDP: the
    ``DistributedSampler`` it installs draws ``randperm(n)`` seeded with 0 + epoch, and
    process r takes every W-th sample from r on, so the k-th batches of all processes
    together hold samples k·W·b to (k+1)·W·b of that permutation."""
    n = SETUP["data"]["n"]
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch))


def _one_process(lw, case: str, order_seed: int | None = None) -> dict:
    options = dict(CASES[case])
    return lw.reference(
        lw.Data.make(**SETUP["data"]),
        WORLD * SETUP["batch"],
        WORLD * SETUP["meta_batch"],
        SETUP["epochs"],
        epoch_order=_lightning_order,
        order_seed=order_seed,
        **options,
    )


@pytest.mark.parametrize("case", CASES)
def test_two_ddp_processes_equal_one_process(lw, ranks, case):
    """Equal up to the order of the sums: the processes add their shards' sums, one
    process sums the whole batch in its kernels' order. The bound is the one process's own
    spread under shuffled samples, measured here (tests/rounding.py)."""
    single = _one_process(lw, case)
    reordered = [_one_process(lw, case, seed) for seed in REORDERINGS]
    results = [r[case] for r in ranks]
    for key in ("model", "weight_net"):
        for name in single[key]:  # every process holds bit for bit the same parameters ...
            assert torch.equal(results[0][key][name], results[1][key][name]), name
        # ... equal to one process's on the whole batches
        assert_states_within_order_noise(
            results[0][key], single[key], [r[key] for r in reordered], f"{key}."
        )
    # the logged loss is the global batch's, on every process
    assert torch.equal(results[0]["loss"], results[1]["loss"])
    assert_within_order_noise(
        results[0]["loss"], single["loss"], [r["loss"] for r in reordered], "loss"
    )
    # the bound rejects a plausible bug: weights normalised another way ("mean" for "sum")
    if not CASES[case]:
        wrong = lw.reference(
            lw.Data.make(**SETUP["data"]),
            WORLD * SETUP["batch"],
            WORLD * SETUP["meta_batch"],
            SETUP["epochs"],
            epoch_order=_lightning_order,
            normalize="mean",
        )
        with pytest.raises(AssertionError, match="more than rounding explains"):
            assert_states_within_order_noise(
                wrong["model"], single["model"], [r["model"] for r in reordered], "model."
            )


@pytest.mark.parametrize("case", CASES)
def test_ddp_reduces_nothing_and_mwnet_reduces_every_sum(ranks, case):
    """DDP's reducer stays idle (its communication hook is never called), so nothing is
    reduced twice; mwnet's reducer carried the virtual step's, the meta step's, the
    weighting net's and the real update's gradients. The hook does count DDP's
    all-reduces when there are some: a step through ``manual_backward`` makes one."""
    for rank in ranks:
        result = rank[case]
        assert result["ddp_allreduces"] == 0
        categories = {"virtual_grad", "meta_grad", "weight_net_grad", "real_grad"}
        assert categories <= {k for k, v in result["mwnet_bytes"].items() if v > 0}
        steps = SETUP["epochs"] * SETUP["data"]["n"] // (WORLD * SETUP["batch"])
        assert result["global_step"] == steps
        assert rank["manual_backward_allreduces"] > 0
