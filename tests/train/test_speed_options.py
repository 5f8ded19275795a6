"""``method.low_memory`` and ``method.compile``: validated in the config, reach the method."""

from __future__ import annotations

import pytest
import torch

from mwnet.methods import build_method
from mwnet.models import build
from mwnet.train.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.mwnet.low_memory=true", "method.mwnet.hypergrad=reverse"],
            "low_memory=true needs",
        ),
        (["method.mwnet.low_memory=true", "method.mwnet.hypergrad=head"], "low_memory=true needs"),
        (["method.compile=true", "method.mwnet.hypergrad=head"], "compile=true with mwnet needs"),
        (["method.compile=true", "method.name=l2rw"], "not l2rw"),
    ],
)
def test_unsupported_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fmnist-flip2-40", overrides)


def test_supported_combinations_load():
    cfg = load_config("fmnist-flip2-40", ["method.mwnet.low_memory=true", "method.compile=true"])
    assert (
        cfg.method.mwnet.low_memory and cfg.method.compile and cfg.method.mwnet.hypergrad == "fast"
    )
    assert load_config("fmnist-flip2-40", ["method.name=ce", "method.compile=true"])


def _method(name: str, **options):
    model = build("mlp", 4, in_channels=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([])
    counts = torch.ones(4)
    return model, build_method(
        name,
        model=model,
        optimizer=optimizer,
        meta_batches=batches,
        class_counts=counts,
        options=options,
    )


def test_options_reach_the_method():
    _, mw = _method("mwnet", low_memory=True, compile=True)
    assert mw.reweighter.low_memory and mw.reweighter.compile
    model, ce = _method("ce", compile=True)
    assert ce.model is not model and ce.model._orig_mod is model  # a compiled view of it
    with pytest.raises(ValueError, match="compile is supported by"):
        _method("l2rw", compile=True)


# --- the update schedule through the training loop --------------------------------------


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    from fake_data import write_idx

    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _scheduled(root, out, name: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.meta_per_class=5",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=50",
        "model.name=mlp",
        "optim.epochs=4",
        "optim.milestones=[3]",
        "method.mwnet.meta_interval_schedule=2@1",
        "method.mwnet.freeze_epoch=2",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        "threads=1",
    ]


def test_the_loop_applies_the_schedule_and_a_resumed_run_follows_it(fmnist_root, tmp_path):
    """k=1 in epoch 1, k=2 in epoch 2, frozen from epoch 3: four, two, then no meta steps
    (the record's meta loss is gone once frozen); a run cut after epoch 2 and resumed
    ends bit for bit where the uninterrupted one ends."""
    from mwnet.run import read_jsonl
    from mwnet.train import loop

    straight, straight_dir = loop.start(
        load_config("fmnist-flip2-40", _scheduled(fmnist_root, tmp_path, "straight")), quiet=True
    )
    straight.fit()
    records = read_jsonl(straight_dir / "metrics.jsonl")
    assert [r["meta_loss"] is None for r in records] == [False, False, True, True]
    assert straight.exp.method.reweighter.steps_done == 16
    assert straight.exp.method.updates.frozen_at == 2
    cut, cut_dir = loop.start(
        load_config("fmnist-flip2-40", _scheduled(fmnist_root, tmp_path, "cut")), quiet=True
    )
    cut.fit(stop_after=2)
    del cut
    resumed = loop.resume(cut_dir, quiet=True)
    resumed.fit()
    assert resumed.exp.method.reweighter.frozen
    timing = ("epoch_time", "wall_time")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in records]
    again = [
        {k: v for k, v in r.items() if k not in timing}
        for r in read_jsonl(cut_dir / "metrics.jsonl")
    ]
    assert strip == again
    for name in ("model", "weight_net"):
        a = straight.exp.model if name == "model" else straight.exp.method.reweighter.weight_net
        b = resumed.exp.model if name == "model" else resumed.exp.method.reweighter.weight_net
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(v, w), f"{name}.{k}"
