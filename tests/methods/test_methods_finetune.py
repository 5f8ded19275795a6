"""The fine-tuning baseline: CE on training batches, then on meta batches at its own lr."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_nets import assert_same, batch, build, make_model, state


def test_source_switches_at_epochs_and_sets_the_lr():
    model = make_model("mlp")
    optimizer, method = build(
        "finetune", model, "mlp", {"finetune_epochs": 2, "finetune_lr": 0.007}
    )
    assert method.extra_epochs == 2
    assert [method.source(e) for e in range(3)] == ["train"] * 3
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert [method.source(e) for e in (3, 4)] == ["meta", "meta"]
    assert optimizer.param_groups[0]["lr"] == 0.007


def test_meta_epochs_are_plain_ce_steps_at_the_finetune_lr():
    torch.manual_seed(0)
    model = make_model("cnn")
    expected = copy.deepcopy(model)
    optimizer, method = build("finetune", model, "cnn", {"finetune_lr": 0.02}, momentum=0.0)
    method.source(3)
    optimizer.param_groups[0]["lr"] = 5.0  # a scheduler stepping on must not move it
    xm, ym = batch("cnn", 500, n=8)
    out = method.step(xm, ym)
    assert optimizer.param_groups[0]["lr"] == 0.02
    ref = torch.optim.SGD(expected.parameters(), lr=0.02)
    loss = F.cross_entropy(expected(xm), ym, reduction="none").mean()
    loss.backward()
    ref.step()
    assert torch.equal(out.loss, loss.detach())
    assert_same(state(model), state(expected), rtol=0, atol=0)


def test_meta_epoch_errors_name_the_meta_batch():
    _, method = build("finetune", make_model("mlp"), "mlp")
    method.source(3)
    x, y = batch("mlp", 0)
    y[1] = 9
    with pytest.raises(ValueError, match="meta labels out of range"):
        method.step(x, y)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epochs": None}, r"finetune needs options\['epochs'\]"),
        ({"finetune_epochs": -1}, "finetune_epochs must be"),
        ({"finetune_lr": 0.0}, "finetune_lr must be > 0"),
    ],
)
def test_bad_finetune_options(options, match):
    with pytest.raises(ValueError, match=match):
        build("finetune", make_model("mlp"), "mlp", options)
