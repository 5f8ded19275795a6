"""docs/RUN_DIRECTORY.md lists every field a run writes: the keys of real runs'
metrics.jsonl, summary.json and signals.npz, with and without synthetic noise, each
appear in its tables, so the documentation cannot drift from what is written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from mwnet.run import read_json, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "RUN_DIRECTORY.md"


def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented(section: str) -> set[str]:
    """Backticked names in the first column of the tables under ``## section``."""
    text = DOC.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| field") and "---" not in line:
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = _fake_data().write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)
    out = tmp_path_factory.mktemp("runs")
    common = [
        f"data.root={root}",
        "data.download=false",
        "data.meta_per_class=3",
        "data.batch_size=30",
        "data.meta_batch_size=30",
        "model.name=mlp",
        "model.options.hidden=[8]",
        "optim.epochs=2",
        "method.warmup_epochs=1",
        "threads=1",
        "device=cpu",
        f"out_dir={out}",
    ]
    variants = {
        "noisy-cmwnet": [
            "data.noise=flip2",
            "data.noise_rate=0.4",
            "data.val_size=20",
            "method.name=cmwnet",
        ],
        "clean-ce": ["method.name=ce"],
        "auto-mwnet": [
            "data.noise=flip2",
            "data.noise_rate=0.4",
            "method.name=mwnet",
            "data.meta_source=auto",
            "data.pseudo_meta_per_class=2",
        ],
    }
    dirs = []
    for name, extra in variants.items():
        trainer, run_dir = loop.start(load_config(None, [*common, *extra, f"name={name}"]), True)
        trainer.fit()
        dirs.append(run_dir)
    return dirs


def test_every_metrics_field_is_documented(runs) -> None:
    records = [record for run in runs for record in read_jsonl(run / "metrics.jsonl")]
    written = {key for record in records for key in record}
    assert written - _documented("`metrics.jsonl`") == set()


def test_every_summary_field_is_documented(runs) -> None:
    written = {key for run in runs for key in read_json(run / "summary.json")}
    assert written - _documented("`summary.json`") == set()


def test_every_signals_array_is_documented(runs) -> None:
    written = set()
    for run in runs:
        with np.load(run / "signals.npz") as npz:
            written |= set(npz.files)
    assert written - _documented("`signals.npz`") == set()


def test_every_model_file_field_is_documented(runs) -> None:
    """Top-level fields, and the fields of its ``model``, ``input`` and ``training`` dicts
    as ``model.name``... (a model's own options and weights are not the format's)."""
    import torch

    written = set()
    for run in runs:
        file = torch.load(run / "model.pt", weights_only=True)
        for key, value in file.items():
            if key in ("model", "input", "training"):
                written |= {f"{key}.{inner}" for inner in value}
            else:
                written.add(key)
    assert {"format", "state_dict", "input.normalize", "training.test_acc"} <= written
    assert written - _documented("`model.pt`") == set()


def test_every_file_is_documented(runs) -> None:
    from mwnet.cli import main

    assert main(["issues", str(runs[0]), "--top", "2"]) == 0
    written = {p.name for run in runs for p in run.iterdir()}
    assert written - _documented("Files") == set()
