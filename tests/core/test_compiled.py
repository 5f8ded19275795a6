"""``compile=True``: the eager step up to float rounding, dropout masks included."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import BnCnn, random_batches

import mwnet


def _steps(model, compile_: bool, low_memory: bool, sizes=(12, 12, 12)) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    torch.manual_seed(1)
    vnet = mwnet.WeightNet(hidden=10).double()
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
        vnet,
        torch.optim.SGD(vnet.parameters(), lr=0.5),
        compile=compile_,
        low_memory=low_memory,
    )
    torch.manual_seed(3)
    for i, n in enumerate(sizes):
        rw.step(*random_batches((3, 8, 8), 5, torch.float64, seed=i, n=n))
    return {**model.state_dict(), **{f"v.{k}": v for k, v in vnet.state_dict().items()}}


@pytest.mark.parametrize("low_memory", [False, True])
def test_compiled_step_equals_the_eager_step(low_memory):
    """Three float64 steps with dropout: compiled and eager agree to rounding, so the
    compiled training forward drew the masks the eager JVP replays."""
    torch.manual_seed(0)
    model = BnCnn(dropout=0.3).double()
    eager = _steps(model, False, low_memory)
    compiled = _steps(model, True, low_memory)
    assert eager.keys() == compiled.keys()
    # Dropout draws depend on the sample order, so no reordered run measures the noise:
    # measured at 1 and 2 threads, the two stay within 5e-16 (a few ulps of the
    # parameters' 0.1 scale); 1e-11 is 20000 times that, and a wrong mask or term moves
    # them by 1e-3 and more.
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-9, atol=1e-11, msg=k)
    assert int(compiled["bn.num_batches_tracked"]) == 3


def test_a_new_batch_size_compiles_again_and_still_equals_eager():
    """An epoch's last batch is smaller: the compiled step must take it (a dynamic-shape
    recompile once broke the second backward through the training graph)."""
    torch.manual_seed(0)
    model = BnCnn(dropout=0.3).double()
    sizes = (12, 20, 7, 12)
    eager = _steps(model, False, False, sizes)
    compiled = _steps(model, True, False, sizes)
    for k in eager:  # bound as above: measured within 5e-16
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.parametrize("hypergrad", ["reverse", "head"])
def test_compile_needs_the_fast_hypergradient(hypergrad):
    model = BnCnn()
    with pytest.raises(ValueError, match="compile=True needs hypergrad='fast'"):
        mwnet.MetaReweighter(
            model, torch.optim.SGD(model.parameters(), lr=0.1), hypergrad=hypergrad, compile=True
        )
