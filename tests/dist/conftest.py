"""Tiny Fashion-MNIST files for the torchrun tests, written by the training tests' helper."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _fake_data():
    path = Path(__file__).resolve().parent.parent / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return _fake_data().write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)
