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


def test_under_bf16_autocast_the_jvp_runs_eagerly():
    """Tracing the JVP under autocast failed (a batch norm's bfloat16 output with a float32
    tangent, refused by the next layer: "expected m1 and m2 to have the same dtype"); the
    step now takes the eager JVP there while its other passes stay compiled.

    The compiled and eager steps round differently in bfloat16 (fused kernels), so their
    weighting nets are compared only coarsely: measured 3.4 % of the step apart, where a
    JVP that lost its tangent or a wrong term would put them a whole step apart."""
    torch.manual_seed(0)
    model = BnCnn()
    nets = {}
    for compile_ in (False, True):
        torch.manual_seed(1)
        vnet = mwnet.WeightNet(hidden=10)
        copied = copy.deepcopy(model)
        rw = mwnet.MetaReweighter(
            copied,
            torch.optim.SGD(copied.parameters(), lr=0.2),
            vnet,
            torch.optim.SGD(vnet.parameters(), lr=0.5),
            compile=compile_,
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = rw.step(*random_batches((3, 8, 8), 5, seed=0))
        assert torch.isfinite(result.meta_loss)
        nets[compile_] = torch.cat([p.detach().reshape(-1) for p in vnet.parameters()])
    moved = (nets[False] - _initial_weight_net()).abs().max()
    assert moved > 0
    assert (nets[True] - nets[False]).abs().max() <= 0.1 * moved


def _initial_weight_net() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.cat([p.detach().reshape(-1) for p in mwnet.WeightNet(hidden=10).parameters()])
