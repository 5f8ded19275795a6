"""hypergrad='head' refuses a head whose output the model does not return as it is."""

from __future__ import annotations

import pytest
import torch
from nets import Mlp
from reliability import covers
from torch import nn

import mwnet


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(8, 6, generator=g),
        torch.randint(0, 4, (8,), generator=g),
        torch.randn(6, 6, generator=g),
        torch.randint(0, 4, (6,), generator=g),
    )


def _head_rw(model: nn.Module, **kw) -> mwnet.MetaReweighter:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return mwnet.MetaReweighter(model, opt, hypergrad="head", **kw)


class _LearnedTemperature(Mlp):
    """The last Linear's output times a learnable scale that starts at 1: equal to the
    head's output at the first step, different once the scale has trained."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * super().forward(x)


class _WideHidden(nn.Module):
    """A hidden nn.Linear as wide as the output, then a trainable output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 4)
        self.out = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


@covers(
    "head mode",
    "head= naming a hidden nn.Linear (its output feeds more layers)",
    "ValueError at the first meta update: the head does not produce the model's output, "
    "with the parameters acting after it",
)
@pytest.mark.parametrize(("make", "head"), [(Mlp, "body.0"), (_WideHidden, "hidden")])
def test_named_hidden_layer_is_refused(make, head):
    torch.manual_seed(0)
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"head='{head}' does not produce the model's output"):
        _head_rw(model, head=head).step(*_batches())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} moved"


@covers(
    "head mode",
    "a learnable transform after the head (a temperature that starts at 1, so the head's "
    "output equals the model's at the first step)",
    "ValueError naming the parameter ('scale'), at the first meta update, before it can drift",
)
def test_learnable_transform_after_the_head_is_refused():
    torch.manual_seed(0)
    model = _LearnedTemperature()
    rw = _head_rw(model)
    with pytest.raises(ValueError, match=r"detected head 'head' does not .*\(scale\)"):
        rw.step(*_batches())
    assert float(model.scale.detach()) == 1.0


@covers(
    "head mode",
    "head= naming the output layer of a model that post-processes it without parameters",
    "accepted (the user's explicit choice), as documented",
)
def test_parameter_free_post_processing_stays_allowed_when_named():
    class Doubled(Mlp):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (2.0 * super().forward(x)).float()

    torch.manual_seed(0)
    rw = _head_rw(Doubled(), head="head")
    for seed in range(3):
        assert rw.step(*_batches(seed)).meta_loss is not None
