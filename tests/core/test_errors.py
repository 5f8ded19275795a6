"""Bad input gets an error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import Mlp
from torch import nn

import mwnet


def _rw(**kw) -> mwnet.MetaReweighter:
    torch.manual_seed(0)
    model = Mlp()
    return mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1), **kw)


def _batch(n=8, m=6, classes=4):
    return (
        torch.randn(n, 6),
        torch.randint(0, classes, (n,)),
        torch.randn(m, 6),
        torch.randint(0, classes, (m,)),
    )


def test_loss_not_per_sample():
    rw = _rw(loss_fn=lambda out, y: F.cross_entropy(out, y))
    with pytest.raises(ValueError, match=r"one loss per sample, shape \(8,\).*reduction='none'"):
        rw.step(*_batch())


def test_meta_loss_not_scalar():
    rw = _rw(meta_loss_fn=lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(ValueError, match="meta_loss_fn must return a scalar"):
        rw.step(*_batch())


@pytest.mark.parametrize("which", ["training", "meta"])
def test_batch_label_size_mismatch(which):
    x, y, xm, ym = _batch()
    if which == "training":
        y = y[:5]
    else:
        ym = ym[:2]
    with pytest.raises(ValueError, match=f"{which} batch: .* inputs but labels of shape"):
        _rw().step(x, y, xm, ym)


@pytest.mark.parametrize("which", ["training", "meta"])
def test_labels_out_of_range(which):
    x, y, xm, ym = _batch()
    (y if which == "training" else ym)[1] = 7
    with pytest.raises(ValueError, match=rf"{which} labels out of range: label 7 .* \[0, 3\]"):
        _rw().step(x, y, xm, ym)


def test_empty_batch():
    x, y, xm, ym = _batch()
    with pytest.raises(ValueError, match="training batch is empty"):
        _rw().step(x[:0], y[:0], xm, ym)


def test_model_without_trainable_parameters():
    model = Mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        mwnet.MetaReweighter(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_optimizer_without_model_parameters():
    with pytest.raises(ValueError, match="optimizer holds none of the model's"):
        mwnet.MetaReweighter(Mlp(), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_parameters_missing_from_optimizer_warn():
    model = Mlp()
    with pytest.warns(UserWarning, match="not in the optimizer"):
        mwnet.MetaReweighter(model, torch.optim.SGD(model.head.parameters(), lr=0.1))


@pytest.mark.parametrize("where", ["training", "meta"])
def test_non_finite_loss_names_the_step_and_updates_nothing(where):
    rw = _rw()
    rw.step(*_batch())
    rw.step(*_batch())
    x, y, xm, ym = _batch()
    (x if where == "training" else xm)[3] = float("nan")
    before = {k: v.clone() for k, v in rw.model.state_dict().items()}
    before_v = {k: v.clone() for k, v in rw.weight_net.state_dict().items()}
    with pytest.raises(FloatingPointError, match=f"non-finite {where} loss at step 2"):
        rw.step(x, y, xm, ym)
    for k, v in rw.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in rw.weight_net.state_dict().items():
        assert torch.equal(v, before_v[k])
    assert rw.steps_done == 2


def test_non_finite_training_loss_position_is_reported():
    x, y, xm, ym = _batch()
    x[3] = float("inf")
    with pytest.raises(FloatingPointError, match=r"1 of 8 values, e\.g\. positions \[3\]"):
        _rw().step(x, y, xm, ym)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"normalize": "max"}, "normalize must be one of"),
        ({"hypergrad": "magic"}, "hypergrad must be one of"),
        ({"virtual_step": "adam"}, "virtual_step must be one of"),
        ({"meta_interval": 0}, "meta_interval must be an integer >= 1"),
    ],
)
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        _rw(**kw)


def test_optimizer_virtual_step_needs_sgd():
    model = Mlp()
    with pytest.raises(
        ValueError, match=r"mirrors torch\.optim\.SGD .* Adam; use virtual_step=.sgd."
    ):
        mwnet.MetaReweighter(model, torch.optim.Adam(model.parameters()), virtual_step="optimizer")


def test_weight_net_output_shape_checked():
    rw = _rw(weight_net=nn.Linear(1, 2))
    with pytest.raises(ValueError, match="one weight per loss"):
        rw.step(*_batch())
