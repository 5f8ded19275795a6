"""The JVP's replay of the training forward: the recorded outputs as primals, tangents by
rule, equal to plain forward-mode AD (float64) for every layer kind it handles or passes
through; the fast hypergradient that uses it is held to reverse mode in test_hypergrad."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mwnet.core.tangents import ForwardRecord, TangentReplay


class Zoo(nn.Module):
    """Every op the replay has a rule for, and the cases where it must fall back."""

    def __init__(self, in_place: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.plain_bn = nn.BatchNorm2d(6, affine=False)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.eval_bn = nn.BatchNorm2d(4).eval()  # running statistics: plain forward AD
        self.drop = nn.Dropout(0.3)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4 * 8, 5)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = self.plain_bn(self.grouped(h))
        if self.in_place:
            h.mul_(1.5)  # the recorded output changes: the replay must not reuse it
        h = self.drop(self.eval_bn(self.up(torch.tanh(h))))
        h = h.mean(dim=3)  # (n, 4, 8)
        h = self.bn1d(self.conv1d(h))
        return self.fc(h.flatten(1))


def _jvp(model, x, y, tangents, record=None) -> torch.Tensor:
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    torch.manual_seed(5)
    with fwad.dual_level():
        duals = {
            k: fwad.make_dual(p.detach(), tangents[k]) if k in tangents else p.detach()
            for k, p in params.items()
        }
        if record is None:
            out = functional_call(model, {**duals, **buffers}, (x,))
        else:
            with TangentReplay(record) as replay:
                out = functional_call(model, {**duals, **buffers}, (x,))
            replay.check_complete()
        losses = F.cross_entropy(out, y, reduction="none")
        return fwad.unpack_dual(losses).tangent


def _setup(in_place: bool = False, frozen: tuple[str, ...] = ()):
    torch.manual_seed(0)
    model = Zoo(in_place).double().train()
    model.eval_bn.eval()
    with torch.no_grad():  # non-trivial running statistics for the eval-mode norm
        model.eval_bn.running_mean.uniform_(-0.5, 0.5)
        model.eval_bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    g = torch.Generator().manual_seed(1)
    tangents = {
        k: torch.randn(p.shape, generator=g, dtype=p.dtype)
        for k, p in model.named_parameters()
        if k not in frozen
    }
    torch.manual_seed(5)
    with ForwardRecord() as record:
        functional_call(model, {k: v.clone() for k, v in model.named_buffers()}, (x,))
    return model, x, y, tangents, record


@pytest.mark.parametrize(
    "frozen",
    [(), ("conv.weight", "fc.weight"), ("bn.weight", "bn.bias")],
    ids=["all", "weights-frozen-biases-moving", "norm-frozen"],
)
def test_replay_equals_forward_mode_ad(frozen):
    model, x, y, tangents, record = _setup(frozen=frozen)
    want = _jvp(model, x, y, tangents)
    got = _jvp(model, x, y, tangents, record)
    assert want.norm() > 0
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


def test_replay_reuses_the_recorded_outputs():
    """The primal of each handled call is the recorded tensor itself, not a recomputation."""
    model, x, _, tangents, record = _setup()
    seen = []

    class Spy(TangentReplay):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = super().__torch_function__(func, types, args, kwargs)
            if func is F.conv2d:
                seen.append(fwad.unpack_dual(out).primal.data_ptr())
            return out

    params = dict(model.named_parameters())
    torch.manual_seed(5)
    with fwad.dual_level():
        duals = {k: fwad.make_dual(p.detach(), tangents[k]) for k, p in params.items()}
        with Spy(record):
            functional_call(model, {**duals, **dict(model.named_buffers())}, (x,))
    recorded = [c.output.data_ptr() for c in record.calls if c.func is F.conv2d]
    assert seen == recorded and len(seen) == 2


def test_an_output_changed_in_place_is_recomputed():
    model, x, y, tangents, record = _setup(in_place=True)
    want = _jvp(model, x, y, tangents)
    torch.testing.assert_close(_jvp(model, x, y, tangents, record), want, rtol=1e-11, atol=1e-13)


def test_a_forward_that_changes_is_an_error():
    model, x, y, tangents, record = _setup()
    record.calls.pop()  # the replay meets a call the record does not have
    with pytest.raises(RuntimeError, match=r"called linear where the training forward called"):
        _jvp(model, x, y, tangents, record)
    model, x, y, tangents, record = _setup()
    record.calls.append(record.calls[-1])
    with pytest.raises(RuntimeError, match=r"made 9 of the 10 recorded calls"):
        _jvp(model, x, y, tangents, record)


def test_recording_leaves_the_forward_as_it_was():
    """The record runs a train-mode batch norm through the kernel ``F.batch_norm`` runs, to
    keep its statistics: outputs, gradients and running statistics are bit for bit those of
    the unrecorded forward."""
    runs = []
    for record in (False, True):
        model, x, y, *_ = _setup()
        torch.manual_seed(5)
        if record:
            with ForwardRecord() as rec:
                out = model(x)
            saved = [c.statistics for c in rec.calls if c.func is F.batch_norm]
            # the three train-mode norms keep theirs; the eval-mode one has none
            assert [s is not None for s in saved] == [True, True, False, True]
        else:
            out = model(x)
        grads = torch.autograd.grad(F.cross_entropy(out, y), list(model.parameters()))
        runs.append((out, grads, [b.clone() for b in model.buffers()]))
    (out0, grads0, buffers0), (out1, grads1, buffers1) = runs
    assert torch.equal(out0, out1)
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers0, buffers1, strict=True))


def test_the_recorded_statistics_are_what_the_tangent_uses():
    """Planted: shifting one recorded batch mean changes the JVP, so the replay reads the
    record's statistics (and the equality above is the rule's, not a recomputation's)."""
    model, x, y, tangents, record = _setup()
    right = _jvp(model, x, y, tangents, record)
    first = next(c for c in record.calls if c.statistics is not None)
    mean, invstd = first.statistics
    first.statistics = (mean + 0.1, invstd)
    torch.testing.assert_close(right, _jvp(model, x, y, tangents), rtol=1e-11, atol=1e-13)
    assert (_jvp(model, x, y, tangents, record) - right).abs().max() > 1e-6
