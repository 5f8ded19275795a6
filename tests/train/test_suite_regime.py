"""The small-CNN regime of the suite (``cnn-flip2-40``, ``cnn-pair-40``): its cells are the
configs it promises (the small CNN at its preset's values on 6,000 noisy images, the usual
1,000 clean ones, every method at its defaults), its data splits come out at those sizes,
and its report table reads a tiny hand-made ledger to hand-computed numbers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_data import write_idx

from mwnet.data.preparation import prepare
from mwnet.suite.command import time_key
from mwnet.suite.grid import (
    DEFAULT_METHODS,
    DEFAULT_SETTINGS,
    FULL,
    REGIME_METHODS,
    SETTINGS,
    candidates,
    cells,
    method_named,
    setting_named,
)
from mwnet.suite.ledger import Ledger, cell_config, make_record
from mwnet.suite.results import Result
from mwnet.suite.runs import Results
from mwnet.suite.tables import regime_table, regime_target
from mwnet.train.config import load_config

REGIME = ("cnn-flip2-40", "cnn-pair-40")


def test_the_regime_runs_eight_methods_on_three_seeds_only_when_named() -> None:
    grid = cells(FULL, REGIME, REGIME_METHODS)
    assert len(grid) == 2 * 8 * 3
    assert {(c.setting.name, c.method.name, c.seed) for c in grid} == {
        (s, m, seed) for s in REGIME for m in REGIME_METHODS for seed in (0, 1, 2)
    }
    assert not set(REGIME) & set(DEFAULT_SETTINGS)
    # the three rows added for the regime are on request only
    assert not {"mwnet-famus", "mwnet-partial", "mwnet-partial-k5"} & set(DEFAULT_METHODS)
    # a method the regime does not list does not run there even when asked for
    assert not cells(FULL, REGIME, ("l2rw",))
    assert all(s.group == "regime" for s in SETTINGS if s.name in REGIME)


@pytest.mark.parametrize("setting", REGIME)
def test_each_cell_is_the_small_cnn_at_its_defaults(setting: str) -> None:
    noise = {"cnn-flip2-40": "flip2", "cnn-pair-40": "pair"}[setting]
    for method in REGIME_METHODS:
        # fixed: one candidate, no tag, nothing searched (the run is named method-seedN)
        assert candidates(setting_named(setting), method_named(method), FULL)[0].tag == ""
        (cell,) = [c for c in cells(FULL, (setting,), (method,)) if c.seed == 1]
        assert cell.run_name == f"{method}-seed1"
        cfg = load_config(None, list(cell.overrides))
        assert (cfg.data.noise, cfg.data.noise_rate) == (noise, 0.4)
        assert (cfg.data.subset, cfg.data.val_size, cfg.seed) == (7000, 1000, 1)
        assert cfg.model.name == "cnn_small" and dict(cfg.model.options) == {}
        assert (cfg.optim.lr, cfg.optim.epochs, list(cfg.optim.milestones)) == (0.01, 10, [6, 8])
        assert cfg.method.name == cell.method.overrides[0].split("=")[1]
        if method != "ce":
            w = cfg.method.mwnet
            hypergrad = method.removeprefix("mwnet-").removesuffix("-k5")
            assert w.hypergrad == hypergrad
            assert w.meta_interval == (5 if method.endswith("-k5") else 1)
            # the noise settings' weighting-net optimizer, at the authors' rate
            assert (w.net_optimizer, w.net_lr) == ("adam", 0.001)
            # the library's defaults for famus and partial: no option set
            assert w.famus_layers is None and w.famus_sampling is None
            assert w.partial is None


def test_the_regime_trains_on_6000_images_with_1000_held_out_and_1000_clean(
    tmp_path: Path,
) -> None:
    """The clean set is carved before the 7,000-image subset, the validation split is held
    out of the subset: 6,000 + 1,000 + 1,000 (a subset taken after the validation split,
    or a clean set carved from the subset, would give other sizes)."""
    root = write_idx(tmp_path / "fmnist", per_class=850, test_per_class=1)
    (cell,) = [c for c in cells(FULL, ("cnn-pair-40",), ("mwnet-fast",)) if c.seed == 0]
    cfg = load_config(None, [*cell.overrides, f"data.root={root}", "data.download=false"])
    data = prepare(cfg.data, cfg.seed, meta_reader="mwnet")
    assert len(data.train_labels) == 6000 and len(data.val_labels) == 1000
    assert data.meta_labels.bincount(minlength=10).tolist() == [100] * 10
    # the three are disjoint: no clean or held-out image is trained on
    train = set(data.source_index.tolist())
    assert not train & set(data.val_index.tolist())


def test_the_regime_has_its_own_clock() -> None:
    from mwnet.suite.report import _timing

    assert time_key(REGIME, REGIME_METHODS) == "regime_elapsed_seconds"
    assert time_key(("cnn-flip2-40", "flip2-40"), REGIME_METHODS) == "extra_elapsed_seconds"

    no_runs = SimpleNamespace(planner=SimpleNamespace(results={}))  # a Results with no run
    text = _timing(no_runs, {"elapsed_seconds": 0.0, "regime_elapsed_seconds": 5400.0})
    assert "the small-CNN regime took 1.50 h more" in text


# A tiny ledger: (setting, method) -> per-seed (last-epoch test accuracy, wall seconds);
# None: a collapsed seed (at chance on the validation split).
LEDGER = {
    ("cnn-flip2-40", "ce"): [(70.0, 100.0), (71.0, 100.0), (72.0, 100.0)],
    ("cnn-flip2-40", "mwnet-fast"): [(80.0, 300.0), (81.0, 300.0), (85.0, 300.0)],
    ("cnn-flip2-40", "mwnet-head"): [(79.8, 140.0), (80.6, 140.0), (84.7, 140.0)],
    ("cnn-flip2-40", "mwnet-famus"): [(80.5, 200.0), (81.5, 200.0), (85.5, 200.0)],
    ("cnn-flip2-40", "mwnet-head-k5"): [(79.0, 110.0), (80.0, 110.0), None],
    ("cnn-pair-40", "ce"): [(60.0, 100.0), (61.0, 100.0), (62.0, 100.0)],
    ("cnn-pair-40", "mwnet-fast"): [(78.0, 300.0), (79.0, 300.0), (80.0, 300.0)],
    ("cnn-pair-40", "mwnet-head"): [(77.7, 140.0), (78.6, 140.0), (79.7, 140.0)],
    ("cnn-pair-40", "mwnet-famus"): [(76.0, 200.0), (77.0, 200.0), (78.0, 200.0)],
    ("cnn-pair-40", "mwnet-head-k5"): [(77.0, 110.0), (78.0, 110.0), (79.0, 110.0)],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    """The report's view of the tiny ledger (records made as the suite makes them)."""
    root = tmp_path_factory.mktemp("regime")
    out, ledger = root / "out", Ledger(root / "ledger")
    for (setting, method), seeds in LEDGER.items():
        for cell in cells(FULL, (setting,), (method,)):
            found = seeds[cell.seed]
            acc, wall = found if found is not None else (10.0, 100.0)
            summary = {
                "finished": True,
                "epochs_done": 10,
                "epochs_total": 10,
                "last_test_acc": acc,
                "best_test_acc": acc,
                "last_val_acc": acc if found is not None else 10.0,
                "val_majority_acc": 10.0,
                "val_samples": 1000,
                "wall_time": wall,
                "seed": cell.seed,
            }
            result = Result(summary, [{"epoch": 10, "test_acc": acc}], True, derived={})
            ledger.write(cell, make_record(cell, cell_config(cell, out), result))
    return Results(out, FULL, root / "ledger")


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()[2:]
    split = (line.strip("|").strip().split(" | ") for line in lines)
    return {cells[0]: cells[1:] for cells in split}


def test_the_regime_table_from_a_ledger(results: Results) -> None:
    rows = _rows(regime_table(results))
    # methods in the regime's order, only those with runs
    assert list(rows) == [
        "CE",
        "MW-Net (fast)",
        "MW-Net (famus: 4 random layers, not rescaled)",
        "MW-Net (head)",
        "MW-Net (head, k=5)",
    ]
    # flip2: mean ± sample std, each seed; gap = mean of per-seed differences to fast
    assert rows["MW-Net (fast)"][:2] == ["82.0 ± 2.6 (80.0, 81.0, 85.0)", "0"]
    assert rows["MW-Net (head)"][:2] == ["81.7 ± 2.6 (79.8, 80.6, 84.7)", "-0.3"]
    # pair: head's differences -0.3, -0.4, -0.3
    assert rows["MW-Net (head)"][2:4] == ["78.7 ± 1.0 (77.7, 78.6, 79.7)", "-0.3"]
    # a collapsed seed is marked, left out of the mean, and the gap pairs the seeds both
    # have: (79 - 80 + 80 - 81) / 2 = -1.0, where the difference of the two means over
    # different seeds would say 79.5 - 82.0 = -2.5
    head_k5 = rows["MW-Net (head, k=5)"]
    assert head_k5[0] == "79.5 ± 0.7 (79.0, 80.0, collapsed) **1 of 3 collapsed**"
    assert head_k5[1] == "-1.0"
    # run time over CE's, same seed and setting, averaged: 140 / 100
    assert rows["MW-Net (head)"][-1] == "1.40" and rows["CE"][-1] == "1.00"
    assert rows["MW-Net (head, k=5)"][-1] == "1.10"


def test_the_regime_target_needs_both_noises_and_no_collapse(results: Results) -> None:
    text = regime_target(results)
    # famus is +0.5 under flip2 but -2.0 under pair: out; head, k=5 collapsed once: out;
    # head -0.3 in both, 1.40x: in
    assert "no seed collapsed: MW-Net (head);" in text
    assert "at most 1.5x CE's run time in these runs: MW-Net (head) (1.40x)." in text
    assert "famus" not in text
    # a stricter cost bound keeps head close but not cheap
    assert regime_target(results, cost=1.3).endswith("in these runs: none.")
    # a looser gap admits famus (pair: -2.0); CE is 11 and 18 points behind: no warning
    assert "famus" in regime_target(results, gap=2.0)
    assert "CE itself" not in regime_target(results, gap=2.0)
    # where CE is as close as the gap allows, the verdict says the settings cannot judge
    assert "CE itself is within 18 points" in regime_target(results, gap=18.0)


def test_the_page_has_a_regime_section_with_its_command(results: Results) -> None:
    from mwnet.suite.page import _regime_section

    text = "\n".join(_regime_section(results))
    assert text.startswith("## The cheap modes on a small CNN")
    assert "`mwnet suite --settings cnn-flip2-40,cnn-pair-40 --methods ce,mwnet-fast," in text
    assert regime_table(results) in text and regime_target(results) in text
