"""Label issues from real runs: every method records per-sample signals, resumably; the
report works from the command line; data.exclude and data.relabel close the loop; bad
input gives one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.cli import main
from mwnet.data import load_dataset, meta_split
from mwnet.run import load_checkpoint, read_json
from mwnet.run.signals import SIGNALS_FILE, SampleSignals
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.evaluate import predict


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _overrides(root: Path, out: Path, name: str, method: str = "mwnet") -> list[str]:
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
        "model.options.hidden=[32]",
        "optim.lr=0.05",
        "optim.epochs=3",
        "optim.milestones=[2]",
        f"method.name={method}",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
    ]


@pytest.fixture(scope="module")
def runs(fmnist_root: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    dirs = {}
    for method in ("mwnet", "ce"):
        cfg = load_config(None, _overrides(fmnist_root, out, method, method))
        trainer, dirs[method] = loop.start(cfg, quiet=True)
        trainer.fit()
    return dirs


@pytest.mark.parametrize("method", ["mwnet", "ce"])
def test_every_method_records_signals_of_the_model_it_trains(runs, method) -> None:
    run_dir = runs[method]
    signals, extra = SampleSignals.load(run_dir / SIGNALS_FILE)
    cfg = loop.run_config(run_dir)
    trainer = loop.Trainer(loop.build_experiment(cfg), run_dir, quiet=True)
    trainer.load_state_dict(load_checkpoint(run_dir / loop.CHECKPOINT))
    e = trainer.exp
    assert signals.epochs == 3
    assert (signals.loss_count == 3).all()  # every sample once per epoch
    assert torch.equal(signals.labels, e.data.train_labels)
    # the last evaluation pass is the final model's view of the training set, in order
    pred, _ = predict(e.model, e.data.train_images, e.data.train_labels, e.normalize, e.device)
    assert torch.equal(signals.last_pred, pred)
    assert signals.has_weights == (method == "mwnet")
    # the training-split index: exactly the samples the meta split left for training
    source = load_dataset("fashion-mnist", "train", root=cfg.data.root, download=False)
    train_idx, _ = meta_split(source.labels, 10, 3, 0)
    assert sorted(extra["index"].tolist()) == sorted(train_idx.tolist())
    assert torch.equal(source.labels[torch.from_numpy(extra["index"])], e.data.true_labels)
    assert extra["corrupted"].tolist() == e.data.corrupted.tolist()
    summary = read_json(run_dir / "summary.json")
    counts = summary["class_counts"]
    assert counts["given"] == torch.bincount(e.data.train_labels, minlength=10).tolist()
    assert counts["true"] == torch.bincount(e.data.true_labels, minlength=10).tolist()


def test_a_resumed_run_continues_the_same_sums(fmnist_root, tmp_path) -> None:
    straight = load_config(None, _overrides(fmnist_root, tmp_path, "straight"))
    trainer, straight_dir = loop.start(straight, quiet=True)
    trainer.fit()
    cut = load_config(None, _overrides(fmnist_root, tmp_path, "cut"))
    trainer, cut_dir = loop.start(cut, quiet=True)
    trainer.fit(stop_after=1)
    assert SampleSignals.load(cut_dir / SIGNALS_FILE)[0].epochs == 1
    loop.resume(cut_dir, quiet=True).fit()
    a = SampleSignals.load(straight_dir / SIGNALS_FILE)[0].state_dict()
    b = SampleSignals.load(cut_dir / SIGNALS_FILE)[0].state_dict()
    for key in a:
        if torch.is_tensor(a[key]):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert a[key] == b[key]


def test_issues_command_writes_the_report(runs, capsys) -> None:
    run_dir = runs["mwnet"]
    assert main(["issues", str(run_dir), "--top", "8"]) == 0
    out = capsys.readouterr().out
    assert "training labels flagged as likely wrong" in out
    assert "against the synthetic noise's truth" in out
    assert "data.exclude=" in out
    for name in ("label_issues.csv", "label_issues.json", "label_issues.png"):
        assert (run_dir / name).is_file(), name
    with (run_dir / "label_issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary = read_json(run_dir / "summary.json")
    assert len(rows) == summary["train_samples"]
    report = read_json(run_dir / "label_issues.json")
    assert report["flagged"] == sum(int(r["flagged"]) for r in rows)
    assert report["samples"] == len(rows)


def _flagged(run_dir: Path) -> list[dict]:
    with (run_dir / "label_issues.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["flagged"] == "1"]


def test_exclude_and_relabel_close_the_loop(runs, fmnist_root, tmp_path) -> None:
    source = runs["ce"]
    assert main(["issues", str(source), "--top", "0"]) == 0
    flagged = _flagged(source)
    assert flagged, "the tiny run should flag something"
    before = SampleSignals.load(source / SIGNALS_FILE)[1]["index"].tolist()
    base = _overrides(fmnist_root, tmp_path, "x", "ce")[:-1]
    cleaned = load_config(None, [*base, "name=cleaned", f"data.exclude={source}"])
    trainer, _ = loop.start(cleaned, quiet=True)
    kept = trainer.exp.data.train_index.tolist()
    assert sorted(kept) == sorted(set(before) - {int(r["index"]) for r in flagged})
    relabelled = load_config(
        None, [*base, "name=relabelled", f"data.relabel={source / 'label_issues.csv'}"]
    )
    trainer, _ = loop.start(relabelled, quiet=True)
    data = trainer.exp.data
    position = {int(i): p for p, i in enumerate(data.train_index.tolist())}
    for r in flagged:
        assert int(data.train_labels[position[int(r["index"])]]) == int(r["likely_label"])
    assert len(data.train_labels) == len(before)
    relabelled_rate = float((data.train_labels != data.true_labels).float().mean())
    assert data.realized_noise_rate == pytest.approx(relabelled_rate)


def test_bad_label_edit_files_are_one_line_errors(runs, fmnist_root, tmp_path, capsys) -> None:
    base = ["train", "--quiet", *_overrides(fmnist_root, tmp_path, "bad", "ce")]
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("5\n100000\n")
    assert main([*base, f"data.exclude={unknown}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in this run's training set" in err and "100000" in err
    # a report of another kind of noise on the same split: its given labels differ here
    other = tmp_path / "other"
    assert (
        main(["train", "--quiet", *_overrides(fmnist_root, other, "o", "ce"), "data.noise=pair"])
        == 0
    )
    capsys.readouterr()
    assert main(["issues", str(other / "o"), "--top", "0"]) == 0
    capsys.readouterr()
    assert main([*base, f"data.relabel={other / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "was made on other labels" in err and err.count("\n") == 1
    assert main([*base, f"data.exclude={tmp_path / 'nothing-here.csv'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("sample,label\n1,2\n")
    assert main([*base, f"data.relabel={bad_csv}"]) == 2
    assert "needs the column(s)" in capsys.readouterr().err


def test_issues_command_bad_input(runs, tmp_path, capsys) -> None:
    assert main(["issues", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yaml").write_text((runs["ce"] / "config.yaml").read_text())
    assert main(["issues", str(copy)]) == 2
    assert "signals.npz after each epoch" in capsys.readouterr().err
    (copy / SIGNALS_FILE).write_bytes(b"garbage")
    assert main(["issues", str(copy)]) == 2
    assert "damaged" in capsys.readouterr().err
    assert main(["issues", str(runs["ce"]), "--signal", "weight"]) == 2
    assert "recorded no weights" in capsys.readouterr().err
