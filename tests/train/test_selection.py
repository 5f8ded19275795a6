"""The suite's model selection: by last-epoch validation accuracy, never by the test set,
never a diverged run, the same validation split for every method, and the selected values
run on the other seeds and reported.

The grids here are run directories written by hand (a summary, the plot that marks a
finished run), so each test sets the validation and test accuracies it needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.suite.grid import (
    FULL,
    METHOD_NAMES,
    QUICK,
    SECONDS_PER_COST,
    candidates,
    methods_of,
    seeds_of,
    setting_named,
)
from mwnet.suite.report import (
    Results,
    full_train_table,
    headline_table,
    selection_table,
    verdict_table,
)
from mwnet.suite.selection import Planner, failed_file
from mwnet.train.config import load_config
from mwnet.train.experiment import prepare_data

FLIP = setting_named("flip2-40")
VAL_SAMPLES = 1000
MAJORITY = 11.0  # always answering the commonest label of the split: 110 of 1,000


def _planner(out: Path, methods: tuple[str, ...] = ("ce",)) -> Planner:
    return Planner(out, FULL, [FLIP], methods)


def _write(run_dir: Path, val: float, test: float, finished: bool = True) -> None:
    run_dir.mkdir(parents=True)
    summary = {
        "finished": finished,
        "last_val_acc": val,
        "val_majority_acc": MAJORITY,
        "val_samples": VAL_SAMPLES,
        "last_test_acc": test,
        "best_test_acc": test,
        "test_acc_at_best_val": test,
        "wall_time": 1.0,
        "noise_known": True,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": test}) + "\n")
    (run_dir / "accuracy.png").write_bytes(b"png")


def _grid(out: Path, method: str, scores: list[tuple[float, float] | str]) -> list[str]:
    """Seed 0's grid of ``method`` in flip2-40: (validation, test) accuracy per candidate in
    search order, or "failed" (stopped on a non-finite loss). Returns the candidates' tags."""
    planner = _planner(out, (method,))
    spec = methods_of(FLIP, (method,))[0]
    grid = candidates(FLIP, spec, FULL)
    assert len(grid) == len(scores)
    for candidate, score in zip(grid, scores, strict=True):
        cell = planner.cell(FLIP, spec, 0, candidate)
        if score == "failed":
            failed_file(planner.dir(cell)).parent.mkdir(parents=True, exist_ok=True)
            failed_file(planner.dir(cell)).write_text('{"error": "non-finite loss"}\n')
        else:
            _write(planner.dir(cell), *score)
    return [c.tag for c in grid]


def _chosen(out: Path, method: str = "ce") -> str | None:
    sel = _planner(out, (method,)).selection(FLIP, methods_of(FLIP, (method,))[0])
    assert sel.complete
    return None if sel.chosen is None else sel.chosen.tag


def test_the_highest_validation_accuracy_is_selected_whatever_the_test_says(tmp_path) -> None:
    # lr 0.05 has the best test accuracy, lr 0.01 the best validation accuracy
    tags = _grid(tmp_path, "ce", [(40.0, 80.0), (45.0, 70.0)])
    assert tags == ["lr0.05", "lr0.01"]
    assert _chosen(tmp_path) == "lr0.01"


def test_a_tie_keeps_the_first_candidate_of_the_grid(tmp_path) -> None:
    _grid(tmp_path, "ce", [(45.0, 71.0), (45.0, 90.0)])
    assert _chosen(tmp_path) == "lr0.05"


def test_a_run_stopped_on_a_non_finite_loss_is_never_selected(tmp_path) -> None:
    tags = _grid(tmp_path, "ce", [(50.0, 80.0), (45.0, 70.0)])
    # the best-looking candidate left a summary, then stopped on a non-finite loss
    run_dir = tmp_path / "flip2-40" / f"ce-{tags[0]}-seed0"
    failed_file(run_dir).write_text('{"error": "non-finite loss"}\n')
    assert _chosen(tmp_path) == "lr0.01"


def test_a_run_collapsed_to_one_class_is_never_selected(tmp_path) -> None:
    # finite, but no better than answering the commonest label (11.0 % + one sample, 0.1)
    _grid(tmp_path, "ce", [(MAJORITY + 0.1, 10.0), "failed"])
    assert _chosen(tmp_path) is None
    results = Results(tmp_path, FULL)
    assert "every candidate diverged" in selection_table(results)
    assert not results.select("flip2-40", "ce")


def test_one_sample_above_the_constant_answer_is_a_model(tmp_path) -> None:
    _grid(tmp_path, "ce", [(MAJORITY + 0.2, 10.0), (MAJORITY - 1.0, 9.0)])
    assert _chosen(tmp_path) == "lr0.05"


def test_the_selection_runs_on_the_other_seeds_and_heads_the_report(tmp_path) -> None:
    _grid(tmp_path, "ce", [(40.0, 80.0), (45.0, 70.0)])
    planner = _planner(tmp_path)
    ready = planner.ready()
    assert [(c.seed, c.tag) for c in ready] == [(1, "lr0.01"), (2, "lr0.01")]
    assert "optim.lr=0.01" in ready[0].overrides
    _write(planner.dir(ready[0]), 44.0, 72.0)
    failed_file(planner.dir(ready[1])).write_text('{"error": "non-finite loss"}\n')
    assert planner.ready() == []
    results = Results(tmp_path, FULL)
    assert sorted(r.last for r in results.select("flip2-40", "ce")) == [70.0, 72.0]
    table = headline_table(results)
    row = next(line for line in table.splitlines() if line.startswith("| flip2 noise 40 %"))
    assert "71.0 ± 1.4 (1 of 3 seeds diverged)" in row
    assert "| lr 0.01 |" in selection_table(results)


def test_a_continuation_starts_from_the_selected_run_of_its_seed(tmp_path) -> None:
    tags = _grid(tmp_path, "mwnet-fast", [(40.0, 80.0), (60.0, 60.0)])
    planner = _planner(tmp_path, ("mwnet-fast-finetune",))
    ready = [c for c in planner.ready() if c.method.name == "mwnet-fast-finetune"]
    assert ready and all(c.seed == 0 for c in ready)
    source = tmp_path / "flip2-40" / f"mwnet-fast-{tags[1]}-seed0"
    assert all(f"model.init_from={source}" in c.overrides for c in ready)


@pytest.fixture
def fake_fmnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_idx(tmp_path / "data" / "fashion-mnist", per_class=30, test_per_class=5)
    monkeypatch.setenv("MWNET_DATA", str(root.parent))
    return root


@pytest.mark.parametrize("setting", ["flip2-40", "uniform-60-clean300", "lt-100"])
def test_every_method_of_a_setting_holds_out_the_same_validation_split(
    fake_fmnist, tmp_path, setting
) -> None:
    s = setting_named(setting)
    methods = [m for m in methods_of(s, METHOD_NAMES) if m.after is None]
    planner = Planner(tmp_path / "out", QUICK, [s], tuple(m.name for m in methods))
    seed = seeds_of(s, QUICK)[0]
    splits = {}
    for method in methods:
        cell = planner.cell(s, method, seed, candidates(s, method, QUICK)[0])
        data = prepare_data(load_config(None, list(cell.overrides)))
        splits[method.name] = (data.val_index, data.val_labels, data.train_index)
    assert len(splits) >= 4
    first_index, first_labels, _ = next(iter(splits.values()))
    assert len(first_index) == QUICK.val_size
    for name, (index, labels, train) in splits.items():
        assert torch.equal(index, first_index), name
        assert torch.equal(labels, first_labels), name  # the same noisy labels, too
        assert set(train.tolist()).isdisjoint(index.tolist()), name


def test_the_estimate_counts_every_planned_run_at_its_cost(tmp_path) -> None:
    # CE in flip2-40: 2 learning rates on seed 0, the selection on seeds 1 and 2
    assert _planner(tmp_path).total() == 4
    per_cost = SECONDS_PER_COST / 3600
    assert _planner(tmp_path).estimated_core_hours() == pytest.approx(4 * per_cost)
    # MW-Net (fast, cost 3.5) on small data (0.15): 2 lrs x the default weighting-net lr,
    # 4 more seeds
    small = Planner(tmp_path, FULL, [setting_named("small-flip2-40")], ("mwnet-fast",))
    assert small.total() == 2 + 4
    assert small.estimated_core_hours() == pytest.approx(6 * 3.5 * 0.15 * per_cost)


def _seeds(out: Path, method: str, tests: dict[int, float]) -> None:
    """``method``'s flip2-40 runs with the given test accuracy per seed: seed 0's grid (the
    first candidate selected) and the selection on the other seeds listed."""
    first, *rest = [(50.0, tests[0])] + [(40.0, 10.0)] * (
        len(candidates(FLIP, methods_of(FLIP, (method,))[0], FULL)) - 1
    )
    _grid(out, method, [first, *rest])
    planner = _planner(out, (method,))
    for cell in planner.ready():
        if cell.seed in tests:
            _write(planner.dir(cell), 50.0, tests[cell.seed])


def _verdict_row(out: Path) -> str:
    table = verdict_table(Results(out, FULL))
    return next(line for line in table.splitlines() if line.startswith("| flip2 noise 40 %"))


def test_the_verdict_gives_the_margin_to_the_best_method_paired_by_seed(tmp_path) -> None:
    _seeds(tmp_path, "ce", {0: 80.0, 1: 82.0, 2: 84.0})
    _seeds(tmp_path, "mwnet-fast", {0: 78.0, 1: 81.0, 2: 83.0})
    row = _verdict_row(tmp_path)
    assert "| CE: 82.0 ± 2.0 | MW-Net (fast): 80.7 ± 2.5 |" in row
    assert "| -1.33 ± 0.58 | mwnet behind, beyond the spread |" in row


def test_the_verdict_signs_a_win_and_a_negative_paired_margin(tmp_path) -> None:
    _seeds(tmp_path, "ce", {0: 80.0, 1: 80.5, 2: 81.0})
    _seeds(tmp_path, "mwnet-fast", {0: 82.0, 1: 82.5, 2: 83.0})
    assert "| +2.00 ± 0.00 over CE | mwnet ahead, beyond the spread |" in _verdict_row(tmp_path)


def test_a_best_mean_over_other_seeds_keeps_the_minus_of_its_paired_margin(tmp_path) -> None:
    # MW-Net's mean is higher only because CE kept a weak seed MW-Net lost: paired on the
    # seeds both have, MW-Net is 1 point behind, and the margin must not read "+-1.00"
    _seeds(tmp_path, "ce", {0: 81.0, 1: 71.0, 2: 60.0})
    _seeds(tmp_path, "mwnet-fast", {0: 80.0, 1: 70.0})
    row = _verdict_row(tmp_path)
    assert "MW-Net (fast): 75.0 ± 7.1 |" in row
    assert "| -1.00 ± 0.00 over CE |" in row
    assert "+-" not in row


CNN_FLIP = setting_named("full-cnn-flip2-40")


def test_the_full_cnn_regime_runs_whole_seeds_and_fine_tunes_the_ce_run(tmp_path) -> None:
    methods = ("ce", "finetune", "ce-finetune", "mwnet-fast", "mwnet-fast-finetune")
    planner = Planner(tmp_path, FULL, [CNN_FLIP], methods)
    assert [m.name for m in methods_of(CNN_FLIP, methods)] == [
        "ce",
        "ce-finetune",
        "mwnet-fast",
        "mwnet-fast-finetune",
    ]
    # CE -> fine-tune runs only where a setting names it
    assert "ce-finetune" not in [m.name for m in methods_of(FLIP, methods)]
    assert planner.total() == 4 * 3
    # seed by seed, slowest first: a regime stopped early leaves whole seeds
    order = [(c.seed, c.method.name) for c in planner.ready()]
    assert order == [(s, m) for s in (0, 1, 2) for m in ("mwnet-fast", "ce")]
    ce0 = next(c for c in planner.ready() if c.method.name == "ce" and c.seed == 0)
    _write(planner.dir(ce0), 50.0, 80.0)
    follow = [c for c in planner.ready() if c.method.name == "ce-finetune"]
    assert [c.seed for c in follow] == [0]
    assert f"model.init_from={planner.dir(ce0)}" in follow[0].overrides
    assert "optim.epochs=0" in follow[0].overrides
    config = load_config(None, list(follow[0].overrides))
    assert (config.method.finetune.lr, config.method.finetune.epochs) == (0.001, 10)


def test_the_full_training_set_table_gives_seeds_wall_time_and_the_verdict(tmp_path) -> None:
    planner = Planner(tmp_path, FULL, [CNN_FLIP], ("ce", "mwnet-fast"))
    walls = {"ce": 600.0, "mwnet-fast": 1800.0}
    tests = {"ce": {0: 80.0, 1: 81.0}, "mwnet-fast": {0: 83.0, 1: 83.5}}
    for cell in planner.ready():
        if cell.seed in tests[cell.method.name]:
            run_dir = planner.dir(cell)
            _write(run_dir, 50.0, tests[cell.method.name][cell.seed])
            summary = json.loads((run_dir / "summary.json").read_text())
            summary["wall_time"] = walls[cell.method.name]
            (run_dir / "summary.json").write_text(json.dumps(summary))
    results = Results(tmp_path, FULL)
    row = next(
        line
        for line in full_train_table(results).splitlines()
        if line.startswith(f"| {CNN_FLIP.title}")
    )
    assert row.endswith("| 80.5 ± 0.7 | **83.2 ± 0.4** | 0, 1 | 30 min (3.0x) |")
    verdict = verdict_table(results, group="full-train")
    assert "| +2.75 ± 0.35 over CE | mwnet ahead, beyond the spread |" in verdict
