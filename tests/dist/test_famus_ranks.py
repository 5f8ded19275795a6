"""hypergrad="famus" on two ranks: every rank keeps the same layers at every step (drawn
from the seed and the step, not from anything a rank holds alone), and the two ranks with
half batches end where one process with the whole batches ends."""

from __future__ import annotations

import pytest
import torch
from dist_workers import Case, run_on_ranks, train
from rounding import assert_states_within_order_noise

from mwnet.core.famus import LayerSampling

pytestmark = pytest.mark.distributed

CASES = [
    Case("famus-uniform", hypergrad="famus", famus=LayerSampling(layers=1, seed=3)),
    Case(
        "famus-rescaled-momentum-interval",
        hypergrad="famus",
        famus=LayerSampling(layers=1, rescale=True, seed=8),
        virtual_step="optimizer",
        meta_interval=2,
    ),
]
REORDERINGS = (1, 2, 3)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return run_on_ranks(CASES, world=2, tmp=tmp_path_factory.mktemp("famus-ranks"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_two_ranks_keep_the_same_layers_and_equal_one_process(case, two_ranks):
    single = train(case, None)
    ranks = [r[case.name] for r in two_ranks]
    assert ranks[0]["famus_kept"] == ranks[1]["famus_kept"] == single["famus_kept"]
    assert len(single["famus_kept"]) == 3
    # one layer of the MLP's two at a time, and not the same one at every step
    assert all(len(k) == 2 for k in single["famus_kept"])
    assert len({tuple(k) for k in single["famus_kept"]}) == 2
    reordered = [train(case, None, order_seed=seed) for seed in REORDERINGS]
    for key in ("model", "weight_net"):
        for name in single[key]:
            assert torch.equal(ranks[0][key][name], ranks[1][key][name]), name
        assert_states_within_order_noise(
            ranks[0][key], single[key], [r[key] for r in reordered], f"{key}."
        )
