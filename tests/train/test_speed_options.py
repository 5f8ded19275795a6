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
        (["method.low_memory=true", "method.hypergrad=reverse"], "low_memory=true needs"),
        (["method.low_memory=true", "method.hypergrad=head"], "low_memory=true needs"),
        (["method.compile=true", "method.hypergrad=head"], "compile=true with mwnet needs"),
        (["method.compile=true", "method.name=l2rw"], "not l2rw"),
    ],
)
def test_unsupported_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fmnist-flip2-40", overrides)


def test_supported_combinations_load():
    cfg = load_config("fmnist-flip2-40", ["method.low_memory=true", "method.compile=true"])
    assert cfg.method.low_memory and cfg.method.compile and cfg.method.hypergrad == "fast"
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
