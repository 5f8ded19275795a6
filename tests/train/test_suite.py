"""The Fashion-MNIST suite: its grid, the AUROC it reports, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_data import write_idx

from mwnet.cli import main
from mwnet.label_issues.metrics import auroc
from mwnet.run import read_jsonl
from mwnet.suite.grid import (
    DEFAULT_METHODS,
    DEFAULT_SETTINGS,
    FULL,
    QUICK,
    SETTINGS,
    cells,
    method_named,
)
from mwnet.suite.report import HEADLINE_END, HEADLINE_START, READING_END, READING_START
from mwnet.suite.runner import run_cell, run_dir_of
from mwnet.train import loop
from mwnet.train.config import load_config

PREVIOUS_DEFAULTS = (
    "ce",
    "class-balanced",
    "l2rw",
    "finetune",
    "ce-finetune",
    "mwnet-fast",
    "cmwnet",
    "cmwnet-sl",
    "mwnet-fast-retrain",
    "mwnet-fast-finetune",
)


def test_full_grid_has_every_method_setting_and_seed() -> None:
    grid = cells(FULL)
    trained = [m for m in DEFAULT_METHODS if method_named(m).after is None]  # no continuations
    field = [m for m in trained if method_named(m).noise_only]
    assert len(trained) == 20 and len(field) == 13
    clean_axis = ("l2rw", "finetune", "mwnet-fast", "cmwnet")
    # the 5 default main settings at seeds 0-2 (class-balanced loss on the long tail only,
    # the field's noisy-label methods on the 3 noisy ones only); the clean-set axis's
    # default (flip2 noise, 100 images) at seeds 0-2 for the methods that read the clean
    # set; small data (noisy) at seeds 0-4
    assert len(grid) == 6 * 3 + 3 * 19 * 3 + 7 * 3 + 1 * 4 * 3 + 19 * 5
    main = [s.name for s in SETTINGS if s.group == "main" and s.in_default]
    assert main == ["clean", "uniform-60", "flip2-40", "instance-40", "lt-100"]
    axis = [s.name for s in SETTINGS if s.group == "clean-size" and s.in_default]
    long_tails = {s.name for s in SETTINGS if s.imbalanced}
    noisy = {s.name for s in SETTINGS if s.noisy}
    assert {(c.setting.name, c.method.name) for c in grid} == {
        *(
            (s, m)
            for s in (*main, "small-flip2-40")
            for m in trained
            if (m != "class-balanced" or s in long_tails) and (m not in field or s in noisy)
        ),
        *((s, m) for s in axis for m in clean_axis),
    }
    assert all(c.setting.name in DEFAULT_SETTINGS for c in grid)
    costs = [c.method.cost for c in grid]
    assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize("scale", [FULL, QUICK], ids=["full", "quick"])
def test_every_cell_is_a_valid_config(scale) -> None:
    # cells that differ in the seed alone load alike: one of each, with its seed checked
    seen: set[tuple[str, ...]] = set()
    for cell in cells(scale):
        rest = tuple(o for o in cell.overrides if not o.startswith("seed="))
        if rest in seen:
            continue
        seen.add(rest)
        cfg = load_config(None, list(cell.overrides))
        assert cfg.seed == cell.seed
        assert cfg.method.name == cell.method.overrides[0].split("=")[1]


def test_pure_imbalance_uses_the_papers_weighting_net_optimizer() -> None:
    settings = ("lt-100", "lt-100-flip2-20")
    by_setting = {
        c.setting.name: c for c in cells(FULL, settings=settings, methods=("mwnet-fast",))
    }
    lt = load_config(None, list(by_setting["lt-100"].overrides))
    noisy_lt = load_config(None, list(by_setting["lt-100-flip2-20"].overrides))
    assert (lt.method.mwnet.net_optimizer, lt.method.mwnet.net_lr) == ("sgd", 1e-5)
    assert (noisy_lt.method.mwnet.net_optimizer, noisy_lt.method.mwnet.net_lr) == ("adam", 1e-3)


def test_the_interval_modes_run_only_when_asked_for() -> None:
    assert "mwnet-head-k5" not in {c.method.name for c in cells(FULL)}
    chosen = cells(FULL, settings=("flip2-40",), methods=("mwnet-head-k5",))
    assert [c.seed for c in chosen] == [0, 1, 2]
    assert "method.mwnet.meta_interval=5" in chosen[0].overrides


def test_unknown_setting_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="flip2-40"):
        cells(FULL, settings=("flip-40",))


def test_each_invocation_adds_its_time_to_its_own_clock() -> None:
    from mwnet.suite.command import FULL_TRAIN, time_key
    from mwnet.suite.grid import DEFAULT_METHODS, DEFAULT_SETTINGS

    assert set(FULL_TRAIN) == {
        "full-flip2-40",
        "full-uniform-60",
        "full-cnn-flip2-40",
        "full-cnn-uniform-60",
    }
    assert time_key(DEFAULT_SETTINGS, DEFAULT_METHODS) == "elapsed_seconds"
    assert time_key(("full-cnn-flip2-40",), DEFAULT_METHODS) == "full_train_elapsed_seconds"
    # a milder variant or the 300-image clean set is an extra, not the full training set
    assert time_key(("lt-10",), DEFAULT_METHODS) == "extra_elapsed_seconds"
    assert time_key(("flip2-40-clean300",), DEFAULT_METHODS) == "extra_elapsed_seconds"


def test_the_timing_line_reports_each_clock(tmp_path: Path) -> None:
    from mwnet.suite.report import Results, _timing

    info = {"elapsed_seconds": 3600.0, "jobs": 2, "full_train_elapsed_seconds": 9000.0}
    text = _timing(Results(tmp_path, FULL), info)
    assert "the suite took 1.00 h of wall-clock time with 2 parallel runs" in text
    assert "the full-training-set regime took 2.50 h more" in text
    assert "extra runs" not in text


def test_the_setup_says_whether_the_weighting_net_lr_was_searched() -> None:
    """A knob with one value is the authors' value, not a search: the report says so."""
    from dataclasses import replace

    from mwnet.suite.report import _method_line, _weight_lr_text

    assert _weight_lr_text(FULL) == (
        "its learning rate is the authors', not searched (Adam 0.001; SGD 1e-05)"
    )
    wider = replace(FULL, weight_lr_values=2)
    assert _weight_lr_text(wider) == (
        "its learning rate is searched (Adam 0.001, 0.0001; SGD 1e-05, 0.0001)"
    )
    mwnet_fast = method_named("mwnet-fast")
    assert _method_line(mwnet_fast, FULL).endswith(
        "searched: lr 0.05, 0.01; fixed: weighting-net lr 0.001"
    )
    assert _method_line(mwnet_fast, wider).endswith(
        "searched: lr 0.05, 0.01; weighting-net lr 0.001, 0.0001"
    )
    assert _method_line(method_named("finetune"), FULL).endswith(
        "searched: lr 0.05, 0.01; fine-tune lr 0.001, 0.01"
    )


def _pairwise_auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    pos, neg = scores[positives], scores[~positives]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=60).astype(np.float64)  # many ties
    positives = rng.random(60) < 0.3
    assert auroc(scores, positives) == pytest.approx(_pairwise_auroc(scores, positives))


def test_auroc_extremes_and_empty_class() -> None:
    positives = np.array([True, True, False, False])
    assert auroc(np.array([3.0, 4.0, 1.0, 2.0]), positives) == 1.0
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), positives) == 0.0
    assert auroc(np.ones(4), positives) == 0.5
    assert auroc(np.arange(4.0), np.zeros(4, dtype=bool)) is None


@pytest.fixture
def fake_fmnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Generated files where ``$MWNET_DATA/fashion-mnist`` points, so the suite never
    reads a real copy installed on the machine."""
    root = write_idx(tmp_path / "data" / "fashion-mnist", per_class=30, test_per_class=5)
    monkeypatch.setenv("MWNET_DATA", str(root.parent))
    return root


def _checkpoint_times(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}


def test_quick_suite_writes_the_report_and_reruns_train_nothing(
    fake_fmnist: Path, tmp_path: Path
) -> None:
    out, docs = tmp_path / "out", tmp_path / "docs"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{HEADLINE_START}\nold table\n{HEADLINE_END}\noutro\n")
    args = ["suite", "--quick", "--jobs", "1", "--out", str(out), "--docs", str(docs)]
    # the methods of the default grid before the field's, and two of those (one with a
    # first phase, one loss-only): every kind of row, in seconds
    methods = [*PREVIOUS_DEFAULTS, "glc", "gce"]
    args += ["--settings", "flip2-40,lt-100", "--readme", str(readme)]
    args += ["--methods", ",".join(methods)]
    assert main(args) == 0

    results = (docs / "RESULTS.md").read_text()
    for title in ("flip2 noise 40 %", "long tail IF 100", "MW-Net (fast)", "CMW-Net (fast)"):
        assert title in results
    assert "AUROC" in results
    assert "## CMW-Net: one weighting curve per class cluster" in results
    assert "| long tail IF 100 | " in results.split("## CMW-Net")[1]
    pngs = ("weighting_functions", "class_aware_curves", "weight_histograms", "auroc")
    for png in (*pngs, "accuracy_vs_time"):
        assert (docs / "results" / f"{png}.png").stat().st_size > 0
    text = readme.read_text()
    assert "old table" not in text and "| flip2 noise 40 % |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    # per setting: 2 learning rates x 1 knob value on seed 0, the selected one on seed 1,
    # for the 7 methods that train (8 on the long tail: class-balanced loss); the
    # fine-tuning continuation searches no lr; CE -> fine-tune runs only where a setting
    # names it (the full-CNN regime)
    assert len(DEFAULT_METHODS) == 23
    # glc and gce like the others (the quick scale searches one knob value), in the
    # noisy setting only
    runs = (7 + 8) * (2 + 1) + 2 * (1 + 1) + 2 * (2 + 1)
    assert len(list(out.glob("*/*/summary.json"))) == runs

    # A hand-written reading survives; finished cells are not trained again.
    (docs / "RESULTS.md").write_text(
        results.replace("_No reading written yet._", "MW-Net helps here because ...")
    )
    before = _checkpoint_times(out)
    assert main(args) == 0
    assert _checkpoint_times(out) == before
    assert "MW-Net helps here because ..." in (docs / "RESULTS.md").read_text()
    assert results.count(READING_START) == 1 and results.count(READING_END) == 1


def test_an_interrupted_cell_resumes_after_its_last_epoch(fake_fmnist: Path, tmp_path: Path):
    cell = cells(QUICK, settings=("flip2-40",), methods=("mwnet-fast",))[0]
    out = tmp_path / "out"
    cfg = load_config(
        None, [*cell.overrides, f"out_dir={out / cell.setting.name}", f"name={cell.run_name}"]
    )
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    assert run_dir == run_dir_of(out, cell)

    result = run_cell(cell, out)
    assert result.status == "resumed"
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert run_cell(cell, out).status == "done"


def test_a_directory_with_another_config_is_refused(fake_fmnist: Path, tmp_path: Path) -> None:
    cell = cells(QUICK, settings=("clean",), methods=("ce",))[0]
    out = tmp_path / "out"
    run_dir = run_dir_of(out, cell)
    cfg = load_config(None, [*cell.overrides, "optim.lr=0.5", f"out_dir={run_dir.parent}"])
    cfg.name = cell.run_name
    loop.start(cfg, quiet=True)
    with pytest.raises(FileExistsError, match=r"different configuration \(optim.lr: 0.5 there"):
        run_cell(cell, out)
    assert os.path.isdir(run_dir)


def test_a_moved_suite_directory_is_still_finished(fake_fmnist: Path, tmp_path: Path) -> None:
    """Runs copied to another output directory are the same runs: not refused, not rerun."""
    cell = cells(QUICK, settings=("clean",), methods=("ce",))[0]
    assert run_cell(cell, tmp_path / "before").status == "trained"
    shutil.copytree(tmp_path / "before", tmp_path / "after")
    assert run_cell(cell, tmp_path / "after").status == "done"


def test_quick_suite_reports_the_no_clean_data_group(fake_fmnist: Path, tmp_path: Path) -> None:
    out, docs = tmp_path / "out", tmp_path / "docs"
    methods = "ce,mwnet-fast,mwnet-sl,cmwnet-sl,mwnet-auto"
    args = ["suite", "--quick", "--jobs", "1", "--out", str(out), "--docs", str(docs)]
    assert main([*args, "--settings", "flip2-40", "--methods", methods]) == 0
    results = (docs / "RESULTS.md").read_text()
    section = results.split("## No clean data")[1].split("\n## ")[0]
    for title in ("CE", "MW-Net (pseudo-meta set)", "CMW-Net-SL (no clean data)"):
        assert title in section
    row = next(line for line in section.splitlines() if line.startswith("| flip2 noise 40 %"))
    assert "MW-Net (fast):" in row and row.rstrip().endswith("% |")  # clean reference, precision
    assert (docs / "results" / "meta_precision.png").stat().st_size > 0
    # no clean image was read: the meta set those runs kept is empty
    for method in ("mwnet-sl", "cmwnet-sl", "mwnet-auto"):
        found = list((out / "flip2-40").glob(f"{method}-lr*-seed*/summary.json"))
        assert len(found) == 2 + 1  # the grid on seed 0 (2 lrs), the selection on seed 1
        for path in found:
            assert json.loads(path.read_text())["meta_samples"] == 0


def test_wall_time_ratio_skips_runs_too_short_to_time() -> None:
    """Summaries round wall time to 0.1 s: a CE run recorded as 0.0 gives no ratio (it
    ended the report in a ZeroDivisionError)."""
    from types import SimpleNamespace

    from mwnet.suite.tables import _wall_text

    def run(seed: int, wall: float) -> SimpleNamespace:
        return SimpleNamespace(seed=seed, summary={"wall_time": wall})

    assert _wall_text([run(0, 120.0), run(1, 120.0)], [run(0, 0.0), run(1, 60.0)]) == (
        "2 min (2.0x)"
    )
    assert _wall_text([run(0, 120.0)], [run(0, 0.0)]) == "2 min"


def test_a_partial_run_reports_beside_its_runs(tmp_path):
    """Without --docs only the default grid writes docs/RESULTS.md; a run of named settings
    or methods writes its report in --out, so it cannot replace the whole page with a part."""
    from mwnet.cli import build_parser
    from mwnet.suite.command import report_folder

    parser = build_parser()
    out = tmp_path / "runs"
    default = parser.parse_args(["suite", "--out", str(out)])
    assert report_folder(default, out) == Path("docs")
    for named in (["--settings", "instance-40"], ["--methods", "ce,mlc"]):
        args = parser.parse_args(["suite", "--out", str(out), *named])
        assert report_folder(args, out) == out
    given = parser.parse_args(["suite", "--settings", "pair-40", "--docs", str(tmp_path / "d")])
    assert given.docs == tmp_path / "d"
