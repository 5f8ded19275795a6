"""``mwnet compare`` at its edges: the run whose flags it reports and retrains on is chosen
without the test set, a method that fails or diverges neither stops the others nor passes
for a result, a rerun keeps what the runs measured when they trained, and a user's own
labels are not called clean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_data import tiny_folder_overrides, write_idx, write_image_folder
from reliability import covers

from mwnet.cli import main
from mwnet.run import read_json
from mwnet.train.compare import Compared, report_run, table, verdict_of

FOLDER = "fmnist-flip2-40-mlp-compare-seed0"


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _args(root: Path, out: Path, methods: str, *extra: str) -> list[str]:
    return [
        "compare",
        "--preset",
        "fmnist-flip2-40-mlp",
        "--methods",
        methods,
        "--jobs",
        "1",
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
        *extra,
    ]


def _run(method: str, test: float, val: float | None = None, **extra: Any) -> Compared:
    """A finished run as compare sees it; ``val`` None: no validation split."""
    summary: dict[str, Any] = {"last_test_acc": test, "best_test_acc": test, "best_epoch": 2}
    summary["wall_time"] = 60.0
    if val is not None:
        summary.update(last_val_acc=val, val_majority_acc=12.0, val_samples=200)
    return Compared(method, Path(method), summary, "trained", 400.0, 30.0, **extra)


@covers(
    "wrong data",
    "mwnet compare --retrain with two weighting runs whose test and validation accuracy disagree",
    "the flags (and the retraining) come from the run best on the validation split; with "
    "no validation split, from the first weighting method listed, and the output says which",
)
def test_the_flags_come_from_the_validation_split_not_the_test_set() -> None:
    # cmwnet is better on the test set, mwnet on the validation split of the noisy labels
    runs = [_run("ce", 90.0, 70.0), _run("cmwnet", 85.0, 60.0), _run("mwnet", 80.0, 65.0)]
    chosen, rule = report_run(runs)
    assert chosen is runs[2], chosen.method
    assert "validation accuracy, on 200 held-out" in rule
    # no validation split: the first weighting method listed, whatever the test set says
    runs = [_run("ce", 90.0), _run("mwnet", 80.0), _run("cmwnet", 85.0)]
    chosen, rule = report_run(runs)
    assert chosen is runs[1], chosen.method
    assert rule == "the first weighting run listed: no validation split, data.val_size=0"
    # no weighting run: the same rules over every run, still never the test set
    runs = [_run("ce", 70.0, 61.0), _run("focal", 90.0, 60.0)]
    assert report_run(runs)[0] is runs[0]
    runs = [_run("ce", 70.0), _run("focal", 90.0)]
    assert report_run(runs)[0] is runs[0]


def _write_run(
    run_dir: Path, last: dict[str, Any], val: float | None = None, majority: float = 12.0
) -> dict[str, Any]:
    """A finished run's summary.json and metrics.jsonl (two epochs, ``last`` the second)."""
    run_dir.mkdir(parents=True)
    summary: dict[str, Any] = {"last_test_acc": 50.0, "class_counts": {"given": [30] * 10}}
    if val is not None:
        summary.update(last_val_acc=val, val_majority_acc=majority, val_samples=200)
    first = {"epoch": 1, "train_loss": 2.0, "zero_weight_steps": 0}
    lines = [json.dumps(first), json.dumps({"epoch": 2, **last})]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


@covers(
    "bad input",
    "a method of mwnet compare diverges or collapses but finishes (at chance on the "
    "validation split, training loss 2.9e22, every weight 0)",
    "its row says '(diverged: ...)' or '(collapsed: ...)' after the accuracy; it is never "
    "the run the label issues and --retrain come from",
)
def test_a_diverged_or_collapsed_run_is_marked_and_never_chosen(tmp_path) -> None:
    healthy = {"train_loss": 0.9, "zero_weight_steps": 0}
    cases = {
        # the constant answer scores 12 %; one sample of 200 more is still chance
        "at-chance": (healthy, 12.5, "diverged: at chance on the validation split"),
        "huge-loss": ({"train_loss": 2.9e22, "zero_weight_steps": 0}, None, "diverged: "),
        "no-weight": ({"train_loss": 0.5, "zero_weight_steps": 7}, None, "collapsed: "),
        "fine-val": (healthy, 13.0, None),  # two samples above the constant answer
        "fine": (healthy, None, None),
    }
    for name, (last, val, want) in cases.items():
        summary = _write_run(tmp_path / name, last, val)
        got = verdict_of(summary, tmp_path / name)
        if want is None:
            assert got is None, (name, got)
        else:
            assert got is not None and got.startswith(want), (name, got)
    huge = tmp_path / "huge-loss"
    assert verdict_of(read_json(huge / "summary.json"), huge) == "diverged: training loss 2.9e+22"
    diverged = "diverged: training loss 2.9e+22"
    runs = [_run("ce", 60.0, 55.0), _run("mwnet", 95.0, 90.0, verdict=diverged)]
    assert report_run(runs)[0] is runs[0]
    assert f"| mwnet | 95.00 % ({diverged}) |" in table(runs)
    assert "| ce | 60.00 % |" in table(runs)
    assert report_run([runs[1]])[0] is None


def _fails_or_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """l2rw stops on a non-finite gradient at its third step; mwnet trains to the end but
    ends as a diverged run does (a training loss of 2.9e22 in its last epoch)."""
    from mwnet.core.checks import NonFiniteError
    from mwnet.methods.l2rw import L2RW
    from mwnet.train import loop

    step, train_to_end = L2RW.step, loop.train_to_end

    def failing_step(self, x, y):
        if self.steps_done == 3:
            raise NonFiniteError("non-finite model gradient at step 3; nothing was changed")
        return step(self, x, y)

    def diverging(cfg, quiet=True, label=None):
        summary, run_dir, status = train_to_end(cfg, quiet=quiet, label=label)
        if cfg.method.name == "mwnet":
            path = run_dir / "metrics.jsonl"
            *before, last = path.read_text().splitlines()
            last = json.dumps({**json.loads(last), "train_loss": 2.9e22})
            path.write_text("\n".join([*before, last]) + "\n")
        return summary, run_dir, status

    monkeypatch.setattr(L2RW, "step", failing_step)
    monkeypatch.setattr(loop, "train_to_end", diverging)


@covers(
    "bad input",
    "one method of mwnet compare stops on an error (non-finite model gradient at step 3)",
    "the methods after it still train; the table shows its row as 'failed: <the error>'; "
    "then 'mwnet: error: 1 of 4 runs failed (l2rw: ...)', exit 2",
)
def test_a_failed_method_leaves_the_others_and_the_table(
    fmnist_root, tmp_path, capsys, monkeypatch
) -> None:
    _fails_or_diverges(monkeypatch)
    args = _args(fmnist_root, tmp_path, "ce,l2rw,mwnet", "--retrain")
    assert main(args) == 2
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    error = "non-finite model gradient at step 3; nothing was changed"  # then what is saved
    assert f"| l2rw | failed: {error} [in epoch 1: " in out, out
    assert "| mwnet | " in out and "(diverged: training loss 2.9e+22) |" in out, out
    assert f"mwnet: error: 1 of 4 runs failed (l2rw: {error} [in epoch 1: " in err, err
    folder = tmp_path / FOLDER
    record = json.loads((folder / "comparison.json").read_text())
    runs = {r["method"]: r for r in record["runs"]}
    assert runs["l2rw"]["status"] == "failed" and runs["l2rw"]["error"].startswith(error)
    assert runs["mwnet"]["status"] == "trained"  # it ran although l2rw before it failed
    assert runs["mwnet"]["verdict"] == "diverged: training loss 2.9e+22"
    # the only run left to take flags from is ce: the diverged weighting run is not used
    assert record["label_issues_from"] == "ce"
    assert "label issues, from the ce run (chosen as the first run listed" in out
    cleaned = record["runs"][-1]
    assert cleaned["method"] == "ce, ce's flagged labels removed"
    exclude = read_json(Path(cleaned["run_dir"]) / "summary.json")
    assert (
        exclude["train_samples"]
        == record["label_issues"]["samples"] - (record["label_issues"]["flagged"])
    )


@covers(
    "stale results",
    "mwnet compare run again after every run has finished",
    "'ce, mwnet: already finished ... nothing to train', no 'training' line; comparison.json "
    "keeps each run's peak memory, CPU time and the elapsed time measured when it trained",
)
def test_a_rerun_keeps_what_the_training_measured(fmnist_root, tmp_path, capsys) -> None:
    # a validation split, and runs that learn enough to end well above chance on it
    val = ("data.val_size=40", "data.noise_rate=0.2", "optim.epochs=3", "optim.milestones=[2]")
    args = _args(fmnist_root, tmp_path, "ce,mwnet", *val, "--retrain")
    assert main(args) == 0
    first = capsys.readouterr()
    assert "training ce, mwnet on the same data under" in first.err
    assert (
        "label issues, from the mwnet run (chosen as the weighting run with the highest "
        "last-epoch validation accuracy, on 40 held-out training samples)" in first.out
    )
    folder = tmp_path / FOLDER
    trained = json.loads((folder / "comparison.json").read_text())
    assert [r["status"] for r in trained["runs"]] == ["trained"] * 3
    assert all(r["cpu_seconds"] > 0 and r["peak_rss_mb"] > 100 for r in trained["runs"])
    assert main(args) == 0
    again = capsys.readouterr()
    assert "ce, mwnet: already finished under" in again.err
    assert "nothing to train" in again.err and "training" not in again.err
    reread = json.loads((folder / "comparison.json").read_text())
    assert [r["status"] for r in reread["runs"]] == ["done"] * 3
    for old, new in zip(trained["runs"], reread["runs"], strict=True):
        assert (new["peak_rss_mb"], new["cpu_seconds"]) == (old["peak_rss_mb"], old["cpu_seconds"])
    assert reread["elapsed_seconds"] == trained["elapsed_seconds"]
    for r in reread["runs"]:  # the table shows the recorded memory, not this process's
        assert f"| {r['peak_rss_mb'] / 1024:.2f} GB |" in again.out


def _own_images(root: Path, out: Path, *extra: str) -> list[str]:
    return tiny_folder_overrides(root, out, *extra)


@covers(
    "wrong data",
    "training on your own images (data.dataset=folder) without synthetic noise",
    "the banner says 'labels as given (noise unknown)', not 'clean labels'; summary.json "
    "records realized_noise_rate: null, not 0.0",
)
def test_own_labels_are_not_called_clean(tmp_path, capsys) -> None:
    from mwnet.train.config import load_config
    from mwnet.train.experiment import prepare_data

    root = write_image_folder(tmp_path / "images")
    assert main(["train", "--quiet", *_own_images(root, tmp_path, "name=own")]) == 0
    err = capsys.readouterr().err
    assert "(24 images, labels as given (noise unknown))" in err, err
    assert "clean labels" not in err
    summary = read_json(tmp_path / "own" / "summary.json")
    assert "realized_noise_rate" in summary and summary["realized_noise_rate"] is None
    # synthetic noise on the same images: what it changed is known and recorded
    noise = ("data.noise=uniform", "data.noise_rate=0.5", "data.meta_per_class=2")
    noisy = _own_images(root, tmp_path, *noise)
    data = prepare_data(load_config(None, noisy))
    assert data.realized_noise_rate == pytest.approx(float(data.corrupted.float().mean()))
    assert data.realized_noise_rate > 0
