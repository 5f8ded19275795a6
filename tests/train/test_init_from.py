"""model.init_from: a run that starts from another run's model; with method.name=finetune
and optim.epochs=0, fine-tuning a finished (e.g. weighting) run's model on the clean set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_data import write_idx

from mwnet.cli import main
from mwnet.run import load_checkpoint, read_jsonl
from mwnet.run.signals import SIGNALS_FILE, SampleSignals
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _overrides(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.noise=flip2",
        "data.noise_rate=0.4",
        "data.batch_size=30",
        "data.meta_batch_size=10",
        "data.augment=false",
        "model.name=mlp",
        "model.options.hidden=[16]",
        "optim.lr=0.05",
        "optim.epochs=2",
        "optim.milestones=[1]",
        "method.name=mwnet",
        *(["method.finetune.epochs=2"] if "method.name=finetune" in extra else []),
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
        f"name={name}",
        *extra,
    ]


@pytest.fixture(scope="module")
def source(fmnist_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    trainer, run_dir = loop.start(load_config(None, _overrides(fmnist_root, out, "src")), True)
    trainer.fit()
    return run_dir


def test_finetuning_a_finished_run_starts_from_its_model(fmnist_root, source, tmp_path):
    extra = ("method.name=finetune", "optim.epochs=0", f"model.init_from={source}")
    cfg = load_config(None, _overrides(fmnist_root, tmp_path, "ft", *extra))
    trainer, run_dir = loop.start(cfg, quiet=True)
    saved = load_checkpoint(source / loop.CHECKPOINT)["model"]
    for key, value in trainer.exp.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    trainer.fit()
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # the fine-tuning epochs only
    assert {r["lr"] for r in records} == {1e-3}  # finetune_lr, never optim.lr
    signals, _ = SampleSignals.load(run_dir / SIGNALS_FILE)
    assert int(signals.loss_count.sum()) == 0  # no training-set step: meta batches only
    changed = load_checkpoint(run_dir / loop.CHECKPOINT)["model"]
    assert any(not torch.equal(changed[k], saved[k]) for k in saved)


def test_no_epochs_without_a_model_to_start_from_is_refused(fmnist_root, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.epochs must be >= 1"):
        load_config(None, _overrides(fmnist_root, tmp_path, "x", "optim.epochs=0"))
    with pytest.raises(ConfigError, match=r"only for method\.name=finetune"):
        load_config(
            None, _overrides(fmnist_root, tmp_path, "x", "optim.epochs=0", "model.init_from=r")
        )


def test_a_model_that_does_not_fit_is_one_error_line(fmnist_root, source, tmp_path, capsys):
    extra = ("model.options.hidden=[8]", f"model.init_from={source}")
    assert main(["train", *_overrides(fmnist_root, tmp_path, "bad", *extra)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.init_from=" in err[0] and "does not fit" in err[0]
    assert not (tmp_path / "bad").exists()  # the failed start gave its directory back
