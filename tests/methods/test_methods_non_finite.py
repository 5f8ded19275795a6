"""Every method: a step that meets NaN changes nothing, BatchNorm statistics included."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_nets import assert_same, batch, build, counts, make_model, meta_stream, state, step
from reliability import covers

from mwnet.methods import METHODS, build_method


def _identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


@covers(
    "state damage",
    "NaN in a training batch, every built-in method (mwnet.methods.METHODS: the MW-Net "
    "family, the baselines and the field's methods), BatchNorm model",
    "FloatingPointError naming the step; parameters, running statistics and "
    "num_batches_tracked bit-identical to before, and the method's own state (MentorNet's "
    "moving average) unchanged",
)
@pytest.mark.parametrize("name", METHODS)
def test_nan_batch_moves_no_buffer(name):
    torch.manual_seed(0)
    model = make_model("cnn")
    _, method = build(name, model, "cnn")
    step(method, *batch("cnn", 0))  # running statistics and momentum exist
    x, y = batch("cnn", 1)
    x[3] = float("nan")
    before, before_method = state(model), copy.deepcopy(method.state_dict())
    with pytest.raises(FloatingPointError, match="at step 1"):
        step(method, x, y)
    _identical(state(model), before)
    assert method.steps_done == 1
    assert_same(method.state_dict(), before_method, rtol=0, atol=0)


@covers(
    "state damage",
    "NaN in a label-correction batch: the EMA teacher's BatchNorm ran on it for soft labels",
    "FloatingPointError; the teacher's running statistics are put back as well",
)
def test_nan_batch_moves_no_teacher_buffer():
    torch.manual_seed(0)
    model, teacher = make_model("cnn"), make_model("cnn")

    def soft_labels(x: torch.Tensor) -> torch.Tensor:
        teacher.train()  # as the EMA teacher runs: batch statistics, running ones move
        with torch.no_grad():
            return F.softmax(teacher(x), dim=1)

    method = build_method(
        "mwnet-sl",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        meta_batches=meta_stream("cnn"),
        class_counts=counts(),
        options={"epochs": 3, "normalize": "mean"},
        soft_labels=soft_labels,
        soft_label_model=teacher,
    )
    step(method, *batch("cnn", 0))
    x, y = batch("cnn", 1)
    x[0] = float("nan")
    before, before_teacher = state(model), state(teacher)
    with pytest.raises(FloatingPointError, match="at step 1"):
        step(method, x, y)
    _identical(state(model), before)
    _identical(state(teacher), before_teacher)
