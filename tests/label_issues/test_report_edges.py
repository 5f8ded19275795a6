"""The label-issue report at its edges: weights on any scale, too few evaluation passes,
montage captions, and records that are stale or another run's (a resumed run's old
report, a copied signals.npz or train_paths.txt), each refused or regenerated."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import covers

from mwnet.cli import build_parser, main
from mwnet.data.label_edits import read_label_edits
from mwnet.label_issues import find_label_issues
from mwnet.label_issues.montage import caption
from mwnet.label_issues.score import MIN_PASSES
from mwnet.run.signals import SIGNALS_FILE, EpochPredictions, SampleSignals
from mwnet.train import loop
from mwnet.train.config import load_config

K = 3


def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _passes(predicted: list[list[int]], labels: list[int]) -> SampleSignals:
    """Signals whose evaluation pass e predicted ``predicted[e][i]`` for sample i (logit 3
    on the prediction, 1 on the class after it)."""
    labels_t = torch.tensor(labels)
    s = SampleSignals(labels_t, K)
    for epoch in predicted:
        pred = torch.tensor(epoch)
        logits = torch.zeros(len(labels), K)
        logits[torch.arange(len(labels)), (pred + 1) % K] = 1.0
        logits[torch.arange(len(labels)), pred] = 3.0
        s.record_epoch(EpochPredictions.from_logits(logits, labels_t))
        s.record_step(torch.arange(len(labels)), torch.full((len(labels),), 0.5))
    return s


# -- scores and flags ------------------------------------------------------------------


@covers(
    "bad input",
    "--signal weight on a run whose weights all lie well below 0.5 (a weighting net's scale)",
    "the low-weight samples flagged by a two-component split of the weights, not none",
)
def test_weight_signal_flags_the_low_weights_whatever_their_scale() -> None:
    rng = np.random.default_rng(0)
    n, wrong = 400, np.arange(400) % 4 == 0  # a quarter of the labels wrong
    weights = np.where(wrong, rng.uniform(0.03, 0.10, n), rng.uniform(0.22, 0.40, n))
    s = SampleSignals(torch.zeros(n, dtype=torch.long), K)
    for _ in range(3):  # three epochs of steps, each sample once
        s.record_step(torch.arange(n), torch.ones(n), torch.tensor(weights, dtype=torch.float32))
    issues = find_label_issues(s, signal="weight")
    assert issues.flagged.tolist() == wrong.tolist()
    assert issues.noise_rate == pytest.approx(0.25)
    assert issues.threshold == "mixture" and issues.summary()["threshold"] == "mixture"
    np.testing.assert_allclose(issues.score, weights, rtol=1e-6)  # the score is the weight
    # the command's default is the same rule, not a 0.5 cut of the raw weights
    args = build_parser().parse_args(["issues", "run", "--signal", "weight"])
    assert args.threshold == "auto"
    # other signals keep the majority threshold; an explicit number is taken as it is
    assert find_label_issues(_passes([[0, 1]], [0, 0])).threshold == 0.5
    assert not find_label_issues(s, signal="weight", threshold=0.02).flagged.any()


@covers(
    "bad input",
    "a report from fewer evaluation passes than its score needs (1 epoch of training)",
    "a warning line and label_issues.json 'warnings' naming the number of passes and why "
    "so few are coarse",
)
def test_a_report_from_few_passes_says_it_is_unreliable(tmp_path) -> None:
    labels = [0, 1, 2, 0]
    one = find_label_issues(_passes([[0, 2, 2, 1]], labels))
    assert len(one.warnings) == 1
    warning = one.warnings[0]
    assert "only 1 evaluation pass " in warning and f"fewer than {MIN_PASSES}" in warning
    assert "coarse" in warning and "unreliable" in warning
    assert f"  warning: {warning}" in one.headline().splitlines()
    one.write_summary(tmp_path / "issues.json")
    assert json.loads((tmp_path / "issues.json").read_text())["warnings"] == [warning]
    few = find_label_issues(_passes([[0, 2, 2, 1]] * (MIN_PASSES - 1), labels))
    assert f"only {MIN_PASSES - 1} evaluation passes" in few.warnings[0]
    enough = find_label_issues(_passes([[0, 2, 2, 1]] * MIN_PASSES, labels))
    assert enough.warnings == () and "warning" not in enough.headline()
    assert enough.summary()["warnings"] == []


@covers(
    "wrong data",
    "montage captions of the most suspicious images, whose scores all round to 0.00",
    "each caption gives the sample's agreement count over the passes and its probability "
    "of the given label (or its weight) in two significant digits",
)
def test_montage_captions_show_why_each_image_is_suspicious() -> None:
    labels = [0, 0, 1, 2]
    # agreement 3/3, 0/3, 1/3 and 0/3
    s = _passes([[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]], labels)
    issues = find_label_issues(s, classes=["a", "b", "c"])
    # p(given) by hand: e^3 / (e^3 + e + 1) = 0.8438 where predicted, e / (...) = 0.1142
    # where the class before it was, 1 / (...) = 0.0420 otherwise
    assert caption(issues, 0) == "#0 agreed 3/3, p 0.84\ngiven: a\nlikely: a"
    assert caption(issues, 1) == "#1 agreed 0/3, p 0.042\ngiven: a\nlikely: b"
    assert caption(issues, 2).splitlines()[0] == "#2 agreed 1/3, p 0.36"  # (.8438+2*.1142)/3
    assert caption(issues, 3) == "#3 agreed 0/3, p 0.042\ngiven: c\nlikely: a"
    # another signal: its value in significant digits, never 0.00
    n = 4
    w = SampleSignals(torch.zeros(n, dtype=torch.long), K)
    w.record_step(torch.arange(n), torch.ones(n), torch.tensor([0.0043, 0.31, 0.27, 0.29]))
    weighted = find_label_issues(w, signal="weight", threshold=0.1)
    assert caption(weighted, 0).splitlines()[0] == "#0 weight 0.0043"
    loss = find_label_issues(w, signal="loss")
    assert caption(loss, 1).splitlines()[0] == "#1 p(given) 0.37"  # exp(-1)


# -- records of real runs ------------------------------------------------------------


def _overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        "data.batch_size=30",
        "data.meta_batch_size=30",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "optim.milestones=[1]",
        "method.name=mwnet",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``run``: trained one epoch, reported on (``label_issues.*``, and its epoch-1
    ``signals.npz`` kept as ``early``), then resumed to its second and last epoch;
    ``seed``: the same run with another seed; ``data``: the same config on other data
    (``data.root`` may change on resume, so only the data fingerprint tells them apart)."""
    fake = _fake_data()
    data = tmp_path_factory.mktemp("data")
    root, other_root = fake.write_idx(data / "a"), fake.write_idx(data / "b", seed=1)
    out = tmp_path_factory.mktemp("runs")
    trainer, run = loop.start(load_config(None, _overrides(root, out, "run")), quiet=True)
    trainer.fit(stop_after=1)
    assert main(["issues", str(run), "--top", "2"]) == 0
    early = out / "early-signals.npz"
    shutil.copy(run / SIGNALS_FILE, early)
    trainer.close()
    loop.resume(run, quiet=True).fit()
    dirs = {"run": run, "early": early}
    for name, r, extra in (("seed", root, ["seed=1"]), ("data", other_root, [])):
        trainer, dirs[name] = loop.start(load_config(None, _overrides(r, out, name, *extra)), True)
        trainer.fit()
    return dirs


def _flagged_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [row for row in csv.DictReader(f) if row["flagged"] == "1"]


def _copy(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run, where / run.name))


@covers(
    "stale results",
    "data.exclude=RUN / data.relabel=RUN/label_issues.csv after the run was resumed and "
    "trained on since the report",
    "is stale: it describes epoch 1 of the run ... make it again with `mwnet issues RUN`",
)
def test_a_report_of_an_earlier_epoch_is_refused(runs, tmp_path, capsys) -> None:
    run = _copy(runs["run"], tmp_path)
    source = json.loads((run / "label_issues.json").read_text())["source"]
    assert source["epoch"] == 1 and source["signals_file"] == SIGNALS_FILE
    base = ["train", "--quiet", "--config", str(run / loop.CONFIG), f"out_dir={tmp_path}"]
    for key in (f"data.exclude={run}", f"data.relabel={run / 'label_issues.csv'}"):
        assert main([*base, "name=again", key]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "is stale: it describes epoch 1 of the run" in err and "(now at epoch 2)" in err
        assert f"make it again with `mwnet issues {run}`" in err
    assert not (tmp_path / "again" / "checkpoint.pt").exists()
    # made again, the report is current and a retraining reads it
    assert main(["issues", str(run), "--top", "0"]) == 0
    capsys.readouterr()
    edits = read_label_edits(run, relabel=True)
    flagged = _flagged_rows(run / "label_issues.csv")
    assert edits.index.tolist() == [int(r["index"]) for r in flagged]


@covers(
    "stale results",
    "a suite's retraining cell whose source run's label_issues.csv is older than the run",
    "the report is made again before the cell trains",
)
def test_the_suite_makes_a_stale_report_again(runs, tmp_path) -> None:
    from mwnet.data.label_edits import stale_report
    from mwnet.suite.runner import ensure_label_issues

    run = _copy(runs["run"], tmp_path)
    assert stale_report(run / "label_issues.csv") is not None
    ensure_label_issues(run)
    assert stale_report(run / "label_issues.csv") is None
    assert json.loads((run / "label_issues.json").read_text())["source"]["epoch"] == 2


@covers(
    "stale results",
    "mwnet issues --top 0 (or a montage that cannot be drawn) beside an earlier report's "
    "label_issues.png",
    "the earlier picture is removed with the report it belonged to",
)
def test_a_report_without_a_montage_removes_the_old_one(runs, tmp_path) -> None:
    run = _copy(runs["run"], tmp_path)
    assert (run / "label_issues.png").is_file()
    assert main(["issues", str(run), "--top", "0"]) == 0
    assert not (run / "label_issues.png").exists()
    assert (run / "label_issues.csv").is_file()


@covers(
    "mixed runs",
    "another run's signals.npz copied into a run directory (other seed, other data)",
    "mwnet: error: ... was recorded by another run (seed 1 there, 0 in config.yaml) / "
    "was recorded on other data",
)
def test_another_runs_signals_are_refused(runs, tmp_path, capsys) -> None:
    run = _copy(runs["run"], tmp_path)
    shutil.copy(runs["seed"] / SIGNALS_FILE, run / SIGNALS_FILE)
    assert main(["issues", str(run), "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwnet: error: ") and err.count("\n") == 1, err
    assert "was recorded by another run (seed 1 there, 0 in config.yaml)" in err
    with pytest.raises(ValueError, match="recorded by another run"):
        find_label_issues(run / SIGNALS_FILE)  # the file itself, inside the run directory
    shutil.copy(runs["data"] / SIGNALS_FILE, run / SIGNALS_FILE)
    assert main(["issues", str(run), "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert "was recorded on other data" in err and err.count("\n") == 1, err
    # the run's own record is reported on as before, also after an edit of config.yaml
    # that a resume may allow (train longer, data files moved)
    shutil.copy(runs["run"] / SIGNALS_FILE, run / SIGNALS_FILE)
    config = (run / loop.CONFIG).read_text()
    assert "epochs: 2\n" in config
    (run / loop.CONFIG).write_text(config.replace("epochs: 2\n", "epochs: 3\n"))
    assert loop.run_config(run).optim.epochs == 3
    assert main(["issues", str(run), "--top", "0"]) == 0


@covers(
    "stale results",
    "an earlier epoch's signals.npz put back into a run directory (or left by a run stopped "
    "while saving)",
    "mwnet: error: ... is of epoch 1 of the run, but its checkpoint.pt is of epoch 2 ... "
    "resume the run",
)
def test_an_earlier_epochs_signals_are_refused(runs, tmp_path, capsys) -> None:
    run = _copy(runs["run"], tmp_path)
    shutil.copy(runs["early"], run / SIGNALS_FILE)
    assert main(["issues", str(run), "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert "is of epoch 1 of the run, but its checkpoint.pt is of epoch 2" in err
    assert "mwnet train --resume" in err and err.count("\n") == 1, err


@covers(
    "mixed runs",
    "a signals.npz of an older mwnet, which names no run",
    "the report, with a warning that it cannot be checked to be this run's",
)
def test_an_older_record_is_read_with_a_warning(runs, tmp_path) -> None:
    run = _copy(runs["run"], tmp_path)
    signals, extra = SampleSignals.load(run / SIGNALS_FILE)
    old = {k: v for k, v in extra.items() if not k.startswith("run_")}
    signals.save(run / SIGNALS_FILE, old)
    issues = find_label_issues(run)
    assert any("names no run" in w for w in issues.warnings)
    assert issues.flagged.tolist() == find_label_issues(runs["run"]).flagged.tolist()


@covers(
    "mixed runs",
    "a train_paths.txt of another run (or reordered) in a run of image files",
    "mwnet: error: ... train_paths.txt lists other images than the 24 training samples ...",
)
def test_another_runs_paths_file_is_refused(tmp_path, capsys) -> None:
    root = _fake_data().write_image_folder(tmp_path / "images")
    cfg = load_config(None, _fake_data().tiny_folder_overrides(root, tmp_path, "name=folder"))
    trainer, run = loop.start(cfg, quiet=True)
    trainer.fit()
    trainer.close()
    capsys.readouterr()
    issues = find_label_issues(run)
    assert issues.paths is not None and len(issues.paths) == 24
    paths = run / "train_paths.txt"
    paths.write_text("".join(f"{p}\n" for p in reversed(issues.paths)))
    assert main(["issues", str(run), "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert "train_paths.txt lists other images than the 24 training samples" in err
    assert err.count("\n") == 1, err
