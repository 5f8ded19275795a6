"""``method.mwnet.hypergrad=famus``: its options are checked once, reach the core with the
run's seed, and a run stopped and resumed through the loop keeps the layers an
uninterrupted run keeps (the draws follow the seed and the step)."""

from __future__ import annotations

import pytest
import torch
from corruption_helpers import assert_same_end, tiny_config, write_fmnist

from mwnet.core.famus import LayerSampling
from mwnet.methods import build_method
from mwnet.methods.hypergrad_mode import Famus, hypergradient
from mwnet.models import build
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    return write_fmnist(tmp_path_factory.mktemp("data") / "fmnist")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.mwnet.famus_layers=2"], "famus_layers is an option of hypergrad=famus"),
        (
            ["method.mwnet.hypergrad=head", "method.mwnet.famus_sampling=top"],
            "famus_sampling is an option of hypergrad=famus",
        ),
        (
            ["method.mwnet.hypergrad=famus", "method.mwnet.famus_layers=0"],
            "method.mwnet.famus_layers must be an integer >= 1",
        ),
        (
            ["method.mwnet.hypergrad=famus", "method.mwnet.famus_sampling=bottom"],
            "famus_sampling=bottom is not valid",
        ),
        (
            [
                "method.mwnet.hypergrad=famus",
                "method.mwnet.famus_sampling=top",
                "method.mwnet.famus_rescale=true",
            ],
            "famus_sampling=top draws nothing",
        ),
        (["method.mwnet.hypergrad=famus", "method.compile=true"], "famus runs eagerly"),
        (["method.mwnet.hypergrad=famus", "method.mwnet.low_memory=true"], "low_memory=true"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("fmnist-flip2-40", overrides)


def test_the_mode_and_its_defaults():
    mode = hypergradient("famus")
    assert mode == Famus(4, "uniform", False)
    assert not mode.compiles and not mode.sync_bn
    assert mode.reweighter_options(seed=9) == {
        "hypergrad": "famus",
        "famus": LayerSampling(4, "uniform", False, 9),
    }


@pytest.mark.parametrize("seed", [5, 6])
def test_options_and_the_run_seed_reach_the_reweighter(seed):
    model = build("mlp", 4, in_channels=1, hidden=(8, 8))
    method = build_method(
        "mwnet",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_batches=iter([]),
        class_counts=torch.ones(4),
        options={"mwnet": {"hypergrad": "famus", "famus_layers": 1, "famus_rescale": True}},
        seed=seed,
    )
    rw = method.reweighter
    assert rw.hypergrad == "famus"
    assert rw._famus == LayerSampling(1, "uniform", True, seed)
    names = [n for n, _ in model.named_parameters()]
    want = [LayerSampling(1, seed=seed).draw(3, step)[0] for step in range(8)]
    got = [rw.famus_parameters(step) for step in range(8)]
    assert got == [[names[2 * i], names[2 * i + 1]] for (i,) in want]


def test_seeds_draw_different_layers():
    draws = [[LayerSampling(1, seed=s).draw(3, t)[0] for t in range(8)] for s in (5, 6)]
    assert draws[0] != draws[1]


def test_a_resumed_run_ends_as_an_uninterrupted_one(fmnist_root, tmp_path):
    famus = ("method.mwnet.hypergrad=famus", "method.mwnet.famus_layers=1")
    mlp = "model.options.hidden=[8,8]"
    whole, whole_dir = loop.start(
        tiny_config(fmnist_root, tmp_path, "mwnet", *famus, mlp, "name=whole"), quiet=True
    )
    whole.fit()
    rw = whole.exp.method.reweighter
    assert len({tuple(rw.famus_parameters(s)) for s in range(rw.steps_done)}) > 1
    cut, cut_dir = loop.start(
        tiny_config(fmnist_root, tmp_path, "mwnet", *famus, mlp, "name=cut"), quiet=True
    )
    cut.fit(stop_after=1)
    cut.close()
    loop.resume(cut_dir, quiet=True).fit()
    assert_same_end(whole_dir, cut_dir)
