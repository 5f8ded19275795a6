"""What the Python API does with inputs the default loss cannot take: labels of another
dtype or shape, inputs that are not a batch the model takes, a model that returns more
than its logits. Each is a TypeError or ValueError naming the argument, what it held and
the fix, before the model moves; integer labels of any integer dtype are taken as int64."""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

import pytest
import torch
from nets import BnCnn, Mlp
from reliability import Row, covers, covers_each
from torch import nn

import mwnet
from mwnet.methods.registry import build_method


class Pair(nn.Module):
    """A model whose forward returns (logits, features), as many feature extractors do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Mlp()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x


def _batch(n: int = 8, m: int = 6, classes: int = 4, shape: tuple[int, ...] = (6,)):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, *shape, generator=g),
        torch.randint(0, classes, (n,), generator=g),
        torch.randn(m, *shape, generator=g),
        torch.randint(0, classes, (m,), generator=g),
    )


def _reweighter(model: nn.Module) -> Callable[..., object]:
    """``step(x, y, x_meta, y_meta)`` of a MetaReweighter."""
    rw = mwnet.MetaReweighter(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    return rw.step


def _method(name: str) -> Callable[[nn.Module], Callable[..., object]]:
    """``step(x, y, x_meta, y_meta)`` of a method whose meta batches are (x_meta, y_meta)."""

    def make(model: nn.Module) -> Callable[..., object]:
        def step(x, y, x_meta, y_meta):
            method = build_method(
                name,
                model=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                meta_batches=repeat((x_meta, y_meta)),
                class_counts=torch.full((4,), 10),
                options={"epochs": 1},
            )
            return method.step(x, y)

        return step

    return make


STEPPERS = {"MetaReweighter": _reweighter, "ce": _method("ce"), "l2rw": _method("l2rw")}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _refused(stepper: str, model: nn.Module, args: tuple, error: type, match: str) -> None:
    """The step raises ``error`` matching ``match`` and leaves the model as it was."""
    before = _state(model)
    with pytest.raises(error, match=match):
        STEPPERS[stepper](model)(*args)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


BAD_LABELS = [
    Row(
        "bad input",
        "float labels through the Python API (MetaReweighter.step, a method's step)",
        "TypeError: y (training labels) has dtype torch.float32, but the loss takes class "
        "indices: pass integer labels (int64) of shape (n,), e.g. y.long() ...",
        (
            lambda y: y.float(),
            TypeError,
            r"y \(training labels\) has dtype torch\.float32.*y\.long\(\)",
        ),
    ),
    Row(
        "bad input",
        "bool labels through the Python API",
        "TypeError: y (training labels) has dtype torch.bool ... pass integer labels (int64)",
        (lambda y: y > 1, TypeError, r"y \(training labels\) has dtype torch\.bool.*int64"),
    ),
    Row(
        "bad input",
        "labels of shape (n, 1) through the Python API",
        "ValueError: y (training labels) has shape (8, 1), but class labels have shape (n,) "
        "... y.reshape(-1)",
        (lambda y: y[:, None], ValueError, r"y \(training labels\) has shape \(8, 1\).*\(n,\)"),
    ),
]


@covers_each(BAD_LABELS)
@pytest.mark.parametrize("stepper", list(STEPPERS))
def test_labels_the_loss_cannot_take(row, stepper):
    change, error, match = row.args
    x, y, xm, ym = _batch()
    _refused(stepper, Mlp(), (x, change(y), xm, ym), error, match)


@covers(
    "bad input",
    "meta labels of dtype float (MetaReweighter.step's y_meta)",
    "TypeError: y_meta (meta labels) has dtype torch.float32 ...",
)
@pytest.mark.parametrize("stepper", ["MetaReweighter", "l2rw"])
def test_float_meta_labels(stepper):
    x, y, xm, ym = _batch()
    _refused(stepper, Mlp(), (x, y, xm, ym.float()), TypeError, r"y_meta \(meta labels\).*float32")


@covers(
    "bad input",
    "integer labels of another dtype (int32, uint8, int16) through the Python API",
    "accepted as int64: the step is the one int64 labels take",
)
@pytest.mark.parametrize("stepper", list(STEPPERS))
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_integer_labels_of_any_dtype_are_taken_as_int64(stepper, dtype):
    x, y, xm, ym = _batch()
    results = []
    for labels, meta_labels in ((y, ym), (y.to(dtype), ym.to(dtype))):
        torch.manual_seed(0)
        model = Mlp()
        for _ in range(2):  # the second step moves the momentum buffers too
            STEPPERS[stepper](model)(x, labels, xm, meta_labels)
        results.append(_state(model))
    moved = _state(Mlp())  # the same seed's starting point: the steps changed the model
    assert any(not torch.equal(results[0][k], moved[k]) for k in moved)
    for key, value in results[0].items():
        assert torch.equal(results[1][key], value), key


def _cnn() -> nn.Module:
    """A CNN for 1x8x8 images: (n, 1, 8, 8) in, (n, 4) out."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))


BAD_INPUTS = [  # (model, one sample's shape, what is done to both batches, error, message)
    Row(
        "bad input",
        "a 1-d float input batch (one number per sample) through the Python API",
        "ValueError: training batch: x has shape (8,), one number per sample ... "
        "x.unsqueeze(1) makes each number a feature",
        (Mlp, (6,), lambda x: x[:, 0], ValueError, r"x has shape \(8,\).*x\.unsqueeze\(1\)"),
    ),
    Row(
        "bad input",
        "3-d images (no channel dimension) for a CNN through the Python API",
        "ValueError: the model cannot take x (training inputs) of shape (8, 8, 8), dtype "
        "torch.float32, on cpu: <torch's message>. ... x.unsqueeze(1) adds a missing channel",
        (
            _cnn,
            (8, 8),
            lambda x: x,
            ValueError,
            r"cannot take x \(training inputs\) of shape \(8, 8, 8\).*x\.unsqueeze\(1\)",
        ),
    ),
    Row(
        "bad input",
        "a model that returns a tuple (logits, features) through the Python API",
        "TypeError: the model returned a tuple for the training batch, but the loss takes "
        "the logits: a tensor of shape (n, classes) ...",
        (Pair, (6,), lambda x: x, TypeError, r"model returned a tuple for the training batch"),
    ),
    Row(
        "bad input",
        "inputs given as a list, not a tensor, through the Python API",
        "TypeError: training batch: inputs and labels must be tensors (x is a list) ...",
        (Mlp, (6,), lambda x: x.tolist(), TypeError, r"must be tensors \(x is a list\)"),
    ),
]


@covers_each(BAD_INPUTS)
@pytest.mark.parametrize("stepper", list(STEPPERS))
def test_inputs_the_model_cannot_take(row, stepper):
    make_model, shape, change, error, match = row.args
    x, y, xm, ym = _batch(shape=shape)
    _refused(stepper, make_model(), (change(x), y, change(xm), ym), error, match)


@covers(
    "bad input",
    "a meta batch whose samples have another shape than the training batch's",
    "ValueError: the meta batch's samples have shape (3, 8) but the training batch's (3, 8, 8) ...",
)
@pytest.mark.parametrize("stepper", ["MetaReweighter", "l2rw"])
def test_meta_batch_of_another_shape(stepper):
    x, y, xm, ym = _batch(shape=(3, 8, 8), classes=5)
    _refused(
        stepper,
        BnCnn(),  # BatchNorm: a forward before the check would move its statistics
        (x, y, xm[:, :, 0], ym),
        ValueError,
        r"meta batch's samples have shape \(3, 8\) but the training batch's \(3, 8, 8\)",
    )


def test_a_good_batch_still_steps():
    """The checks refuse the cases above only: a CNN's 4-d batch trains."""
    x, y, xm, ym = _batch(shape=(3, 8, 8), classes=5)
    model = BnCnn()
    before = _state(model)
    _reweighter(model)(x, y, xm, ym)
    assert not torch.equal(model.state_dict()["fc.weight"], before["fc.weight"])
