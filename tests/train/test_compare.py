"""``mwnet compare``: the methods train on identical data, the table reports what they
did, the label issues come from the weighting run, and a rerun resumes instead of redoing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_data import write_idx

from mwnet.cli import main
from mwnet.run import read_json
from mwnet.run.signals import SIGNALS_FILE, SampleSignals


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _args(root: Path, out: Path, jobs: int) -> list[str]:
    return [
        "compare",
        *(["--retrain"] if jobs == 1 else []),
        "--preset",
        "fmnist-flip2-40-mlp",
        "--methods",
        "ce,mwnet",
        "--jobs",
        str(jobs),
        "--top",
        "4",
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.batch_size=30",
        "data.meta_batch_size=30",
        "model.options.hidden=[16]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        f"out_dir={out}",
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_compare_trains_both_on_the_same_data(fmnist_root, tmp_path, capsys, jobs) -> None:
    assert main(_args(fmnist_root, tmp_path, jobs)) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "fmnist-flip2-40-mlp-compare-seed0"
    record = json.loads((folder / "comparison.json").read_text())
    assert [r["method"] for r in record["runs"]][:2] == ["ce", "mwnet"]
    ce, mw = (SampleSignals.load(folder / m / SIGNALS_FILE) for m in ("ce", "mwnet"))
    np.testing.assert_array_equal(ce[0].labels.numpy(), mw[0].labels.numpy())
    np.testing.assert_array_equal(ce[1]["index"], mw[1]["index"])
    for r in record["runs"][:2]:
        summary = read_json(Path(r["run_dir"]) / "summary.json")
        assert f"| {r['method']} | {summary['last_test_acc']:.2f} % |" in out
        assert r["peak_rss_mb"] > 100  # a torch process: the figure is a real measurement
    assert record["label_issues_from"] == "mwnet"
    if jobs == 1:  # --retrain: the first method again, without the flagged samples
        cleaned = record["runs"][2]
        assert cleaned["method"] == "ce, mwnet's flagged labels removed"
        flagged = record["label_issues"]["flagged"]
        summary = read_json(Path(cleaned["run_dir"]) / "summary.json")
        assert summary["train_samples"] == record["label_issues"]["samples"] - flagged
    assert (folder / "mwnet" / "label_issues.csv").is_file()
    assert "label issues, from the mwnet run" in out
    # a rerun reads the finished runs
    assert main(_args(fmnist_root, tmp_path, jobs)) == 0
    capsys.readouterr()
    again = json.loads((folder / "comparison.json").read_text())
    assert {r["status"] for r in again["runs"]} == {"done"}


def test_compare_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--preset", "fmnist-flip2-40-mlp", "--methods", "ce,magic"])
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["compare", "--preset", "fmnist-flip2-40-mlp", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
