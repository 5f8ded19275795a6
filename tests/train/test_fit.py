"""``mwnet fit`` end to end on a tiny Fashion-MNIST: every candidate trains on the same
data, the continuations start from the label-issue source, the shipped model is the chosen
run's and answers the validation split as fit scored it, and a rerun only reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_idx

import mwnet
from mwnet.cli import main
from mwnet.data.preparation import prepare
from mwnet.fitting.choice import choose
from mwnet.fitting.pipeline import validation_answers
from mwnet.run import read_json
from mwnet.run.saved_config import run_config


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=40)


def _overrides(root: Path, out: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.batch_size=30",
        "data.meta_batch_size=30",
        "model.options.hidden=[16]",
        "optim.epochs=3",
        "optim.milestones=[2]",
        f"out_dir={out}",
    ]


CANDIDATES = "finetune-best,mwnet,retrain,ce"


def test_fit_trains_chooses_and_ships(fmnist_root, tmp_path, capsys) -> None:
    args = ["fit", "--preset", "fmnist-flip2-40-mlp", "--candidates", CANDIDATES, "--jobs", "1"]
    args += ["--top", "0", *_overrides(fmnist_root, tmp_path), "method.finetune.epochs=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "fmnist-flip2-40-mlp-fit-seed0"
    record = json.loads((folder / "fit.json").read_text())
    names = [c["name"] for c in record["candidates"]]
    assert names == CANDIDATES.split(",")  # in the order asked, continuations included
    runs = {c["name"]: Path(c["run_dir"]) for c in record["candidates"]}

    cfgs = {n: run_config(runs[n]) for n in ("mwnet", "ce")}
    # a tenth of the 400 - 30 training images, the config holding out none
    assert {c.data.val_size for c in cfgs.values()} == {record["val_samples"]} == {37}
    source = record["label_issues_from"]
    assert source == "MW-Net"  # the only weighting run, not flagged on 3 epochs
    # a continuation's directory names the run it continues: a rerun whose source changed
    # (one that failed before finishes now) trains its own instead of refusing the old one
    assert runs["retrain"].name == "mwnet-then-retrain"
    assert runs["finetune-best"].name == "mwnet-then-finetune"
    retrain, tuned = run_config(runs["retrain"]), run_config(runs["finetune-best"])
    assert retrain.data.exclude == str(runs["mwnet"]) and retrain.method.name == "ce"
    assert tuned.model.init_from == str(runs["mwnet"]) and tuned.optim.epochs == 0

    # the choice is the margin rule over the shipped files' answers on the validation split
    held = prepare(cfgs["ce"].data, 0, meta_reader="mwnet")
    right = [validation_answers(runs[n], held.val_images, held.val_labels) for n in names]
    for name, answers, row in zip(names, right, record["candidates"], strict=True):
        summary = read_json(runs[name] / "summary.json")
        # the file fit ships answers as the run measured itself in its last epoch (the
        # summary rounds to 0.01 points; one image of 37 is 2.7)
        assert 100 * answers.mean() == pytest.approx(summary["last_val_acc"], abs=0.005)
        assert row["val_acc"] == round(100 * answers.mean(), 2)
        assert row["test_acc"] == round(summary["last_test_acc"], 2)
    usable = [k for k, c in enumerate(record["candidates"]) if c["excluded"] is None]
    decision = choose([right[k] for k in usable])
    assert record["chosen"] == names[usable[decision.chosen]]
    shipped = folder / "model.pt"
    chosen_file = runs[record["chosen"]] / "model.pt"
    assert shipped.read_bytes() == chosen_file.read_bytes()
    loaded = mwnet.load_model(shipped)
    with torch.inference_mode():
        answers = loaded.logits(held.val_images).argmax(1) == held.val_labels
    np.testing.assert_array_equal(answers.numpy(), right[usable[decision.chosen]])

    assert "| candidate | val acc (37 held out, noisy labels) | test acc |" in out
    assert "**chosen**" in out and f"model: {shipped}" in out
    assert "label issues, from the MW-Net run" in out
    assert "MW-Net → fine-tune" in out and "MW-Net → CE without flagged labels" in out

    # a rerun reads every finished run and chooses the same
    assert main(args) == 0
    capsys.readouterr()
    again = json.loads((folder / "fit.json").read_text())
    assert {c["status"] for c in again["candidates"]} == {"done"}
    assert again["chosen"] == record["chosen"] and again["candidates"] == [
        {**c, "status": "done"} for c in record["candidates"]
    ]


def test_fit_without_a_trusted_set(fmnist_root, tmp_path, capsys) -> None:
    result = mwnet.fit(
        "fmnist-flip2-40-mlp",
        [*_overrides(fmnist_root, tmp_path), "data.meta_source=auto", "data.val_size=30"],
        candidates=["ce", "retrain"],
        montage=0,
    )
    capsys.readouterr()
    assert [e.candidate.name for e in result.entries] == ["ce", "retrain"]
    assert result.issues_from == "CE"  # no weighting run: the label issues of the CE run
    retrain = run_config(result.entries[1].run_dir)
    assert retrain.data.meta_source == "auto" and retrain.data.exclude
    assert result.model_path is not None and result.model_path.is_file()


def test_fit_bad_input(tmp_path, capsys) -> None:
    base = ["fit", "--preset", "fmnist-flip2-40-mlp", f"out_dir={tmp_path}"]
    assert main([*base, "method.name=ce"]) == 2
    assert "use --candidates" in capsys.readouterr().err.replace("name them with ", "use ")
    assert main([*base, "--candidates", "ce,magic"]) == 2
    assert "unknown candidate 'magic'" in capsys.readouterr().err
    assert main([*base, "--candidates", "retrain"]) == 2
    assert "only continuations" in capsys.readouterr().err
    assert main([*base, "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, no directory made


def test_fit_on_a_table_ships_a_model_that_reads_rows(tmp_path, capsys) -> None:
    from test_table_runs import overrides, write_table

    table = write_table(tmp_path / "rows.csv", n=120, trusted=12, flip=12)
    shared = [o for o in overrides(table, tmp_path, "x") if not o.startswith(("method.", "name="))]
    result = mwnet.fit(None, [*shared, "data.val_size=20"], candidates=["mwnet", "ce"], montage=0)
    capsys.readouterr()
    assert result.model_path is not None
    # the shipped file scores the held-out rows as the run scored them
    chosen = result.chosen
    summary = read_json(chosen.run_dir / "summary.json")
    assert chosen.val_acc == pytest.approx(summary["last_val_acc"], abs=0.005)
    assert mwnet.load_model(result.model_path).input.channels == 4  # the table's features
