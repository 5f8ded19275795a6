"""The ImageDataset record and the package surface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mwnet.data
from mwnet.data import DataError, ImageDataset


def _ds(n=5):
    return ImageDataset(
        torch.zeros((n, 1, 2, 2), dtype=torch.uint8), torch.arange(n) % 3, ["a", "b", "c"], "t"
    )


def test_subset_and_relabel():
    ds = _ds()
    sub = ds.subset(torch.tensor([4, 0]))
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0] and sub.num_classes == 3
    assert ds.with_labels(torch.zeros(5, dtype=torch.int64)).labels.sum() == 0


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.zeros((2, 1, 2, 2)), torch.zeros(2, dtype=torch.int64), "uint8 tensor"),
        (torch.zeros((2, 2, 2), dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "uint8"),
        (torch.zeros((2, 1, 2, 2), dtype=torch.uint8), torch.zeros(2), "int64 tensor"),
        (torch.zeros((2, 1, 2, 2), dtype=torch.uint8), torch.zeros(3, dtype=torch.int64),
         "2 images but 3 labels"),
        (torch.zeros((1, 1, 2, 2), dtype=torch.uint8), torch.tensor([3]),
         r"labels must lie in \[0, 3\)"),
    ],
)  # fmt: skip
def test_validation(images, labels, message):
    with pytest.raises(DataError, match=message):
        ImageDataset(images, labels, ["a", "b", "c"], "t")


def test_public_names_exist():
    for name in mwnet.data.__all__:
        assert hasattr(mwnet.data, name), name


def test_import_does_not_load_pillow():
    src = Path(mwnet.data.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys, mwnet.data; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
