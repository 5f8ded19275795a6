"""data.val_size: a validation split held out of the noisy training data after the
corruption, the same for every method of a seed, never trained on, measured every epoch
(val_acc) and summarised (last, best epoch, test accuracy there)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.cli import main
from mwnet.run import load_checkpoint, read_json, read_jsonl
from mwnet.run.signals import SIGNALS_FILE, SampleSignals
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.evaluate import accuracy, predict
from mwnet.train.experiment import prepare_data

VAL = 40


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.noise=uniform",
        "data.noise_rate=0.5",
        "data.batch_size=30",
        "data.meta_batch_size=30",
        "data.augment=false",
        "data.eval_batch_size=17",  # uneven evaluation batches
        "model.name=mlp",
        "model.options.hidden=[32]",
        "optim.lr=0.05",
        "optim.epochs=3",
        "optim.milestones=[2]",
        "method.name=mwnet",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
        *extra,
    ]


def _data(root: Path, *extra: str):
    return prepare_data(load_config(None, _overrides(root, Path("unused"), "x", *extra)))


def test_the_split_is_carved_after_the_noise_and_keeps_its_noisy_labels(fmnist_root) -> None:
    whole = _data(fmnist_root)
    held = _data(fmnist_root, f"data.val_size={VAL}")
    assert whole.val_labels is None
    assert len(held.val_labels) == VAL and len(held.train_labels) == len(whole.train_labels) - VAL
    position = {int(s): p for p, s in enumerate(whole.train_index.tolist())}
    val_pos = torch.tensor([position[int(i)] for i in held.val_index])
    train_pos = torch.tensor([position[int(i)] for i in held.train_index])
    # training and validation split the same samples, disjoint, with the same labels
    assert sorted([*val_pos.tolist(), *train_pos.tolist()]) == list(range(len(position)))
    assert torch.equal(held.val_labels, whole.train_labels[val_pos])
    assert torch.equal(held.val_images, whole.train_images[val_pos])
    assert torch.equal(held.train_labels, whole.train_labels[train_pos])
    assert torch.equal(held.corrupted, whole.corrupted[train_pos])
    # the held-out labels are the corrupted ones, not the truth
    assert (held.val_labels != whole.true_labels[val_pos]).float().mean() > 0.2
    assert held.realized_noise_rate == pytest.approx(float(held.corrupted.float().mean()))


def test_every_method_holds_out_the_same_samples(fmnist_root) -> None:
    picks = [
        _data(fmnist_root, f"data.val_size={VAL}", f"method.name={m}").val_index.tolist()
        for m in ("ce", "mwnet", "finetune", "l2rw")
    ]
    assert all(p == picks[0] for p in picks)
    other_seed = _data(fmnist_root, f"data.val_size={VAL}", "seed=1").val_index.tolist()
    assert other_seed != picks[0]


@pytest.fixture(scope="module")
def run_dir(fmnist_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, _overrides(fmnist_root, out, "held", f"data.val_size={VAL}"))
    trainer, path = loop.start(cfg, quiet=True)
    trainer.fit()
    return path


def test_validation_accuracy_is_the_models_on_the_held_out_labels(run_dir) -> None:
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert all(r["val_acc"] is not None for r in records)
    trainer = loop.Trainer(loop.build_experiment(loop.run_config(run_dir)), run_dir, quiet=True)
    trainer.load_state_dict(load_checkpoint(run_dir / loop.CHECKPOINT))
    e, d = trainer.exp, trainer.exp.data
    pred, _ = predict(e.model, d.val_images, d.val_labels, e.normalize, e.device)
    assert records[-1]["val_acc"] == pytest.approx(accuracy(pred, d.val_labels))
    summary = read_json(run_dir / "summary.json")
    assert summary["val_samples"] == VAL
    assert summary["last_val_acc"] == round(records[-1]["val_acc"], 2)
    best = max(records, key=lambda r: r["val_acc"])  # the first of equals
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["best_val_acc"] == round(best["val_acc"], 2)
    assert summary["test_acc_at_best_val"] == round(best["test_acc"], 2)
    # what always answering the split's most common given label scores
    commonest = Counter(d.val_labels.tolist()).most_common(1)[0][1]
    assert summary["val_majority_acc"] == round(100 * commonest / VAL, 2)


def test_held_out_samples_are_never_trained_on(run_dir) -> None:
    signals, extra = SampleSignals.load(run_dir / SIGNALS_FILE)
    data = prepare_data(loop.run_config(run_dir))
    trained = set(extra["index"].tolist())
    assert trained.isdisjoint(data.val_index.tolist())
    assert len(trained) == read_json(run_dir / "summary.json")["train_samples"]
    assert (signals.loss_count == 3).all()  # each training sample once per epoch


def test_an_interrupted_run_keeps_its_best_validation_epoch(fmnist_root, tmp_path) -> None:
    straight = load_config(None, _overrides(fmnist_root, tmp_path, "a", f"data.val_size={VAL}"))
    trainer, a = loop.start(straight, quiet=True)
    trainer.fit()
    cut = load_config(None, _overrides(fmnist_root, tmp_path, "b", f"data.val_size={VAL}"))
    trainer, b = loop.start(cut, quiet=True)
    trainer.fit(stop_after=2)
    loop.resume(b, quiet=True).fit()
    keys = ("last_val_acc", "best_val_epoch", "best_val_acc", "test_acc_at_best_val")
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    assert {k: sa[k] for k in keys} == {k: sb[k] for k in keys}


def test_a_retraining_without_flagged_labels_keeps_the_split(run_dir, tmp_path) -> None:
    assert main(["issues", str(run_dir), "--top", "0"]) == 0
    cfg = loop.run_config(run_dir)
    retrain = load_config(
        None,
        [f"data.exclude={run_dir}", "method.name=ce", f"out_dir={tmp_path}", "name=again"],
        base=run_dir / loop.CONFIG,
    )
    assert retrain.data.val_size == cfg.data.val_size
    again = prepare_data(retrain)
    first = prepare_data(cfg)
    assert torch.equal(again.val_index, first.val_index)
    assert set(again.train_index.tolist()) < set(first.train_index.tolist())


def test_a_split_that_leaves_nothing_is_one_error_line(fmnist_root, tmp_path, capsys) -> None:
    args = ["train", *_overrides(fmnist_root, tmp_path, "too-big", "data.val_size=100000")]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mwnet: error: data.val_size=100000")
