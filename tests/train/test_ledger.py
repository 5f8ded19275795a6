"""The results ledger: one small deterministic record per finished cell, cells skipped on a
matching record and rerun on a stale one, and a report from the ledger alone that is the
report the run directories give, with records from another machine merged in and marked.

One tiny quick suite (flip2 40 %, CE and MW-Net, 6 runs) is trained once for the module;
each test works on copies of its ledger."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

import mwnet
from mwnet.cli import main
from mwnet.run import read_jsonl
from mwnet.run.records import read_json
from mwnet.suite.grid import QUICK, setting_named
from mwnet.suite.ledger import Ledger, cell_config, dumps, make_record
from mwnet.suite.report import Results, write_report
from mwnet.suite.results import cpu_model, read_run_dir
from mwnet.suite.runner import SUITE_FILE, run_plan
from mwnet.suite.selection import Planner

FLIP = setting_named("flip2-40")
METHODS = ("ce", "mwnet-fast")
COMMAND = "mwnet suite --quick"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, Path]:
    """(out, ledger) of a finished quick suite; the data is generated, never downloaded."""
    root = tmp_path_factory.mktemp("suite")
    data = write_idx(root / "data" / "fashion-mnist", per_class=30, test_per_class=5)
    saved = os.environ.get("MWNET_DATA")
    os.environ["MWNET_DATA"] = str(data.parent)
    out, ledger = root / "out", root / "ledger"
    try:
        args = ["suite", "--quick", "--jobs", "1", "--out", str(out), "--ledger", str(ledger)]
        args += ["--docs", str(root / "docs"), "--settings", "flip2-40"]
        assert main([*args, "--methods", ",".join(METHODS)]) == 0
    finally:
        if saved is None:
            os.environ.pop("MWNET_DATA", None)
        else:
            os.environ["MWNET_DATA"] = saved
    return out, ledger


def _records(ledger: Path) -> list[Path]:
    return sorted(ledger.glob("*/*.json"))


def _planner(out: Path, ledger: Path) -> Planner:
    return Planner(out, QUICK, [FLIP], METHODS, Ledger(ledger))


def test_a_finished_cell_leaves_a_small_record_and_no_checkpoint(suite) -> None:
    out, ledger = suite
    records = _records(ledger)
    # 2 learning rates on seed 0 and the selection on seed 1, for each method
    assert len(records) == 2 * (2 + 1)
    assert {p.suffix for p in ledger.rglob("*") if p.is_file()} == {".json"}
    for path in records:
        record = json.loads(path.read_text())
        run_dir = out / path.parent.name / path.stem
        assert record["status"] == "finished" and record["error"] is None
        assert record["cell"]["run_name"] == path.stem
        assert record["summary"] == read_json(run_dir / "summary.json")
        assert record["metrics"] == read_jsonl(run_dir / "metrics.jsonl")
        assert record["config"]["seed"] == record["cell"]["seed"]
        assert record["config"]["out_dir"] == f"$OUT/{FLIP.name}"
        assert record["machine"]["cpu"] == cpu_model()
        assert record["machine"]["device"] == "cpu" and record["machine"]["threads"] >= 1
        assert record["versions"]["torch"] == torch.__version__
        assert record["versions"]["mwnet"] == mwnet.__version__
        assert record["time"]["wall_seconds"] > 0 and record["time"]["cpu_seconds"] > 0
        assert "checkpoint" not in json.dumps(record["derived"])
        assert path.stat().st_size < 64_000
    mwnet_record = json.loads(next(p for p in records if p.stem.startswith("mwnet")).read_text())
    assert {"weight_auroc", "weight_function", "loss_percentiles"} <= set(mwnet_record["derived"])


def test_records_are_deterministic_bytes(suite) -> None:
    out, ledger = suite
    for path in _records(ledger):
        text = path.read_text()
        record = json.loads(text)
        assert dumps(record) == text
        shuffled = dict(random.Random(0).sample(list(record.items()), len(record)))
        shuffled["summary"] = dict(reversed(list(record["summary"].items())))
        assert dumps(shuffled) == text
    planner = _planner(out, ledger)
    planner.ready()
    cell, _ = next(iter(planner.results.values()))
    config = cell_config(cell, out)
    first = dumps(make_record(cell, config, read_run_dir(planner.dir(cell)), 1.5, 1.25))
    again = dumps(make_record(cell, config, read_run_dir(planner.dir(cell)), 1.5, 1.25))
    assert first == again
    assert '"wall_seconds": 1.5' in first and first.endswith("}\n")


def test_a_matching_record_skips_its_cell_without_any_run_directory(suite, tmp_path) -> None:
    _, ledger = suite
    copy = tmp_path / "ledger"
    shutil.copytree(ledger, copy)
    planner = _planner(tmp_path / "elsewhere", copy)
    assert planner.ready() == []
    assert planner.stale == {}
    assert run_plan(planner) == []
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").rglob("*.pt"))


def test_a_stale_record_is_listed_and_its_cell_reruns(suite, tmp_path, monkeypatch, capsys) -> None:
    out, ledger = suite
    monkeypatch.setenv("MWNET_DATA", str(out.parent / "data"))
    copy = tmp_path / "ledger"
    shutil.copytree(ledger, copy)
    path = copy / FLIP.name / "ce-lr0.01-seed0.json"
    record = json.loads(path.read_text())
    record["config"]["optim"]["lr"] = 0.5  # made under another config than the cell's now
    path.write_text(dumps(record))

    planner = _planner(tmp_path / "out", copy)
    assert [c.run_name for c in planner.ready()] == ["ce-lr0.01-seed0"]
    assert list(planner.stale) == [path]
    assert "optim.lr 0.5 in the record, 0.01 now" in planner.stale[path].describe()
    results = Results(tmp_path / "out", QUICK, copy)
    assert results.stale and "optim.lr" in results.stale[0]
    docs = tmp_path / "docs"
    write_report(tmp_path / "out", docs, COMMAND, QUICK, {}, ledger=copy)
    text = (docs / "RESULTS.md").read_text()
    assert "## Stale ledger records" in text and str(path) in text
    assert "; lr0.01: pending | pending |" in text  # never mixed into the grid

    args = ["suite", "--quick", "--jobs", "1", "--out", str(tmp_path / "out"), "--ledger"]
    args += [str(copy), "--docs", str(docs), "--settings", "flip2-40"]
    assert main([*args, "--methods", ",".join(METHODS)]) == 0
    assert f"stale ledger record, its cell runs again: {path}" in capsys.readouterr().err
    trained = sorted(p.parent.name for p in (tmp_path / "out").rglob("summary.json"))
    assert trained == ["ce-lr0.01-seed0"]
    assert json.loads(path.read_text())["config"]["optim"]["lr"] == 0.01
    assert "## Stale ledger records" not in (docs / "RESULTS.md").read_text()


def test_report_only_from_the_ledger_is_the_report_of_the_run_directories(suite, tmp_path) -> None:
    out, ledger = suite
    info = read_json(ledger / SUITE_FILE)
    from_runs = tmp_path / "from-runs"
    readme_runs = tmp_path / "README-runs.md"
    readme_runs.write_text("<!-- suite-headline -->\n<!-- /suite-headline -->\n")
    write_report(out, from_runs, COMMAND, QUICK, info, readme_runs)  # run directories

    copy = tmp_path / "ledger"  # another checkout: the ledger, no run directory
    shutil.copytree(ledger, copy)
    from_ledger = tmp_path / "from-ledger"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- suite-headline -->\n<!-- /suite-headline -->\n")
    args = ["suite", "--quick", "--report-only", "--out", str(tmp_path / "no-runs")]
    args += ["--ledger", str(copy), "--docs", str(from_ledger), "--readme", str(readme)]
    assert main(args) == 0
    assert not (tmp_path / "no-runs").exists()
    text = (from_ledger / "RESULTS.md").read_text()
    assert text.replace(" --readme " + str(readme), "") == (from_runs / "RESULTS.md").read_text()
    assert "| flip2 noise 40 % |" in text and "AUROC" in text
    assert readme.read_text() == readme_runs.read_text()
    assert "| flip2 noise 40 % |" in readme.read_text()
    assert sorted(p.name for p in (from_ledger / "results").iterdir()) == sorted(
        p.name for p in (from_runs / "results").iterdir()
    )


def test_records_from_a_second_machine_merge_and_are_marked(suite, tmp_path) -> None:
    out, ledger = suite
    here, gpu = tmp_path / "ledger", tmp_path / "gpu-ledger"
    shutil.copytree(ledger, here)
    for path in _records(here):  # this machine ran seed 0, the other machine seed 1
        if path.stem.endswith("seed1"):
            record = json.loads(path.read_text())
            record["machine"].update(gpu="NVIDIA H100 80GB HBM3", device="cuda")
            record["config"]["device"] = "cuda"
            (gpu / path.parent.name).mkdir(parents=True, exist_ok=True)
            (gpu / path.parent.name / path.name).write_text(dumps(record))
            path.unlink()

    before = Results(out, QUICK, here)
    assert sorted({r.seed for r in before.runs}) == [0]
    for path in _records(gpu):  # the merge: copying the files in
        shutil.copy(path, here / path.parent.name / path.name)
    merged = Results(out, QUICK, here)
    assert merged.stale == []
    assert sorted(r.seed for r in merged.runs) == [0, 0, 1, 1]
    docs = tmp_path / "docs"
    write_report(out, docs, COMMAND, QUICK, {}, ledger=here)
    text = (docs / "RESULTS.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- Machines"))
    devices = sorted(["NVIDIA H100 80GB HBM3 (GPU) 2", f"{cpu_model()} (CPU) 4"])
    assert (
        line == f"- Machines, cells per device and setting: flip2 noise 40 %: {', '.join(devices)}."
    )
