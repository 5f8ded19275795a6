"""A step that stops on NaN/Inf leaves everything as it was: parameters, BatchNorm
statistics and counters, the weighting net and its optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import BnCnn, WithBuffers
from reliability import covers

import mwnet

IMAGE = (3, 8, 8)


def _batches(seed: int, n: int = 8, m: int = 6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, *IMAGE, generator=g),
        torch.randint(0, 5, (n,), generator=g),
        torch.randn(m, *IMAGE, generator=g),
        torch.randint(0, 5, (m,), generator=g),
    )


def _everything(rw: mwnet.MetaReweighter) -> dict:
    """All state a step may change, copied: the state before, to compare with."""
    return copy.deepcopy(
        {
            "model": rw.model.state_dict(),
            "optimizer": rw.optimizer.state_dict(),
            "weight_net": rw.weight_net.state_dict(),
            "weight_optimizer": rw.weight_optimizer.state_dict(),
            "steps_done": rw.steps_done,
        }
    )


def _assert_identical(got, want, where="state") -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_identical(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want), f"{where} changed"
    else:
        assert got == want, where


def _trained_rw(hypergrad: str, **kw) -> mwnet.MetaReweighter:
    torch.manual_seed(0)
    model = BnCnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rw = mwnet.MetaReweighter(model, opt, hypergrad=hypergrad, **kw)
    for i in range(2):  # momentum and Adam state exist, statistics have moved
        rw.step(*_batches(i))
    return rw


MODES = [("fast", {}), ("reverse", {}), ("head", {}), ("fast", {"low_memory": True})]


@covers(
    "state damage",
    "NaN in the training inputs of a BatchNorm model (MetaReweighter, every hypergrad mode)",
    "FloatingPointError naming the step; parameters, running statistics, num_batches_tracked, "
    "weighting net and both optimizers bit-identical to before; eval outputs stay finite",
)
@pytest.mark.parametrize(("hypergrad", "kw"), MODES, ids=["fast", "reverse", "head", "lowmem"])
def test_nan_in_training_batch_moves_no_buffer(hypergrad, kw):
    rw = _trained_rw(hypergrad, **kw)
    x, y, xm, ym = _batches(5)
    x[2, 0, 0, 0] = float("nan")
    before = _everything(rw)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 2"):
        rw.step(x, y, xm, ym)
    _assert_identical(_everything(rw), before)
    rw.model.eval()
    assert bool(torch.isfinite(rw.model(_batches(6)[0])).all())


@covers(
    "state damage",
    "NaN only in the meta batch of a BatchNorm model",
    "FloatingPointError (non-finite meta loss); the real forward's statistics are put back",
)
@pytest.mark.parametrize(("hypergrad", "kw"), MODES, ids=["fast", "reverse", "head", "lowmem"])
def test_nan_in_meta_batch_moves_no_buffer(hypergrad, kw):
    rw = _trained_rw(hypergrad, **kw)
    x, y, xm, ym = _batches(5)
    xm[1] = float("nan")
    before = _everything(rw)
    with pytest.raises(FloatingPointError, match="non-finite meta loss at step 2"):
        rw.step(x, y, xm, ym)
    _assert_identical(_everything(rw), before)


@covers(
    "state damage",
    "NaN on a step without a meta update (meta_interval > 1)",
    "FloatingPointError; buffers and optimizer unchanged",
)
def test_nan_on_a_step_without_meta_update_moves_no_buffer():
    rw = _trained_rw("fast", meta_interval=3)  # steps 0..1 done; step 2 has no meta update
    assert not rw.is_meta_step()
    x, y, _, _ = _batches(5)
    x[0] = float("inf")
    before = _everything(rw)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 2"):
        rw.step(x, y)
    _assert_identical(_everything(rw), before)


@covers(
    "state damage",
    "finite loss but a non-finite gradient in the real update (e.g. fp16 overflow)",
    "FloatingPointError (non-finite model gradient) before optimizer.step; the weighting "
    "net's update of the same step is undone too",
)
def test_non_finite_real_gradient_undoes_the_weighting_net_update():
    rw = _trained_rw("fast")

    # Only .backward() accumulates into .grad: the virtual and meta passes (autograd.grad)
    # stay finite, so the weighting net is updated before the real gradient is checked.
    def overflow(p: torch.Tensor) -> None:
        p.grad.fill_(float("inf"))

    handle = rw.model.fc.weight.register_post_accumulate_grad_hook(overflow)
    before = _everything(rw)
    with pytest.raises(FloatingPointError, match="non-finite model gradient at step 2"):
        rw.step(*_batches(5))
    handle.remove()
    _assert_identical(_everything(rw), before)
    rw.step(*_batches(5))  # and the next step trains normally
    assert rw.steps_done == 3


@covers(
    "state damage",
    "a module that replaces (not updates) its buffer during a failed step",
    "the original buffer tensor is put back with its old value",
)
def test_replaced_buffer_is_put_back():
    torch.manual_seed(0)
    model = WithBuffers()
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    original = model.calls
    model.shift = model.shift + 0  # now a fresh tensor, replaced again below
    shift = model.shift

    def replacing_forward(x):
        model.shift = model.shift * 1.0  # a new tensor each call
        model.calls += 1
        return model.lin(x - model.shift)

    model.forward = replacing_forward
    x = torch.randn(8, 6)
    x[0] = float("nan")
    with pytest.raises(FloatingPointError):
        rw.step(x, torch.randint(0, 4, (8,)), torch.randn(6, 6), torch.randint(0, 4, (6,)))
    assert model.shift is shift and model.calls is original and int(model.calls) == 0
