"""Training without a clean set: pseudo-meta sets, the EMA teacher, label correction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.cli import main
from mwnet.data import preparation
from mwnet.methods import method_descriptor
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.train import experiment, loop
from mwnet.train.config import ConfigError, load_config

TIMING = ("epoch_time", "wall_time")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _overrides(root: Path, out: Path, name: str, method: str, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.subset=200",
        "data.batch_size=50",
        "data.meta_batch_size=20",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        "data.meta_source=auto",
        "data.pseudo_meta_per_class=3",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.lr=0.05",
        "optim.epochs=3",
        "optim.milestones=[2]",
        "method.warmup_epochs=1",
        *(["method.mwnet.normalize=mean"] if "mwnet" in method_descriptor(method).options else []),
        f"method.name={method}",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        "threads=1",
        *extra,
    ]


def _train(root: Path, out: Path, name: str, method: str, *extra: str) -> Path:
    trainer, run_dir = loop.start(load_config(None, _overrides(root, out, name, method, *extra)))
    trainer.fit()
    return run_dir


@pytest.fixture
def no_meta_split(monkeypatch):
    """Any use of the clean split fails the test: no clean data may be touched."""

    def refuse(*args, **kwargs):
        raise AssertionError("meta_split was called with data.meta_source=auto")

    monkeypatch.setattr(preparation, "meta_split", refuse)


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("cmwnet-sl", ()),
        ("cmwnet-sl", ("method.label_correction.mixup=true",)),
        ("mwnet-sl", ()),
        ("mwnet", ()),
        ("cmwnet", ()),
        ("l2rw", ()),
    ],
)
def test_a_pseudo_meta_set_each_epoch_after_the_warm_up(
    root, tmp_path, method, extra, no_meta_split
):
    run = _train(root, tmp_path, method, method, *extra)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r.get("meta_size") for r in records] == [None, 30, 30]  # 3 per class x 10
    assert records[0]["meta_loss"] is None  # the warm-up: plain cross-entropy
    assert all(r["meta_loss"] is not None for r in records[1:])
    for r in records[1:]:
        assert 0.0 <= r["meta_precision"] <= 1.0 and r["meta_short_classes"] == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["meta_samples"] == 0 and summary["train_samples"] == 200


def test_the_lowest_loss_samples_are_more_often_right_than_the_training_set(root, tmp_path):
    """The point of the pseudo-meta set: after a warm-up, its labels are cleaner than the
    data's (40 % flip noise here, so 60 % of labels right). A fast teacher (decay 0.8):
    this run has only 25 steps."""
    extra = ("optim.epochs=6", "method.warmup_epochs=5", "optim.lr=0.2", "optim.milestones=[6]")
    run = _train(root, tmp_path, "p", "cmwnet-sl", *extra, "method.teacher.decay=0.8")
    precision = [r["meta_precision"] for r in read_jsonl(run / "metrics.jsonl")[5:]]
    summary = json.loads((run / "summary.json").read_text())
    assert min(precision) > 1 - summary["realized_noise_rate"] + 0.1, precision


def test_label_correction_keeps_an_ema_teacher_and_resumes_exactly(root, tmp_path):
    whole = _train(root, tmp_path, "whole", "cmwnet-sl")
    cfg = load_config(None, _overrides(root, tmp_path, "cut", "cmwnet-sl"))
    trainer, cut = loop.start(cfg)
    trainer.fit(stop_after=2)  # stopped after the first pseudo-meta epoch
    loop.resume(cut).fit()
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(read_jsonl(cut / "metrics.jsonl")) == strip(read_jsonl(whole / "metrics.jsonl"))
    a, b = load_checkpoint(cut / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["teacher"]["num_updates"] == b["teacher"]["num_updates"] == 12
    for key, value in b["teacher"]["module"].items():
        assert torch.equal(a["teacher"]["module"][key], value), key
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    teacher = b["teacher"]["module"]["net.1.weight"]  # the EMA trails the model
    assert not torch.equal(teacher, b["model"]["net.1.weight"])


def test_the_teacher_freezes_from_the_given_epoch(root, tmp_path):
    run = _train(root, tmp_path, "fz", "mwnet-sl", "method.teacher.freeze_epoch=2")
    state = load_checkpoint(run / "checkpoint.pt")["teacher"]
    assert state["decay"] == 1.0


def test_eval_scores_the_teacher(root, tmp_path, capsys):
    run = _train(root, tmp_path, "ev", "mwnet-sl")
    assert main(["eval", str(run), "--teacher"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["scored"] == "teacher" and 0 <= scores["test_acc"] <= 100
    plain = _train(root, tmp_path, "ce", "ce")
    assert main(["eval", str(plain), "--teacher"]) == 2
    assert "has no EMA teacher" in capsys.readouterr().err


def test_the_model_can_score_instead_of_a_teacher(root, tmp_path):
    run = _train(root, tmp_path, "m", "mwnet", "data.pseudo_meta_scorer=model")
    assert load_checkpoint(run / "checkpoint.pt")["teacher"] is None
    assert read_jsonl(run / "metrics.jsonl")[-1]["meta_size"] == 30


def test_held_out_split_gives_the_clean_runs_training_set(root, tmp_path):
    held = ("data.holdout_meta=true", "data.meta_per_class=5")
    auto = load_config(None, _overrides(root, tmp_path, "a", "mwnet-sl", *held))
    clean = ("data.meta_source=clean", "data.meta_per_class=5")
    clean = load_config(None, _overrides(root, tmp_path, "c", "mwnet", *clean))
    a, c = experiment.prepare_data(auto), experiment.prepare_data(clean)
    assert torch.equal(a.train_images, c.train_images) and torch.equal(
        a.train_labels, c.train_labels
    )
    assert len(a.meta_labels) == 0 and len(c.meta_labels) > 0  # set aside, never read


def test_a_class_smaller_than_k_gives_all_it_has(root, tmp_path):
    run = _train(root, tmp_path, "k", "mwnet", "data.pseudo_meta_per_class=30")
    last = read_jsonl(run / "metrics.jsonl")[-1]
    counts = torch.bincount(
        experiment.prepare_data(
            load_config(None, _overrides(root, tmp_path, "x", "mwnet"))
        ).train_labels,
        minlength=10,
    )
    assert last["meta_size"] == int(counts.clamp(max=30).sum())
    assert last["meta_short_classes"] == [c for c in range(10) if 0 < counts[c] < 30]


def test_clean_labels_have_no_precision_to_report(root, tmp_path):
    run = _train(root, tmp_path, "n", "mwnet", "data.noise=none", "data.noise_rate=0")
    assert read_jsonl(run / "metrics.jsonl")[-1]["meta_precision"] is None


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("finetune", (), "finetune fine-tunes on a clean set"),
        ("mwnet", ("data.pseudo_meta_per_class=0",), "pseudo_meta_per_class must be >= 1"),
        ("mwnet", ("method.teacher.decay=1.5",), r"method.teacher.decay must lie in \[0, 1\]"),
        (
            "mwnet",
            ("method.label_correction.mixup=true",),
            "method.label_correction.mixup is read by mwnet-sl, cmwnet-sl, not by method.name=mw",
        ),
        (
            "mwnet-sl",
            ("method.label_correction.mixup=true", "method.mwnet.normalize=sum"),
            "mixup=true is label correction on mixed batches: it needs method.mwnet.normalize=mean",
        ),
        ("mwnet", ("data.meta_source=trusted",), "data.meta_source='trusted' is not valid"),
    ],
)
def test_config_errors(root, tmp_path, method, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*_overrides(root, tmp_path, "e", method), *extra])
