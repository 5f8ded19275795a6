"""Bit-for-bit comparison of saved training state, shared by the resume tests."""

from __future__ import annotations

import math

import torch


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """``a`` and ``b`` hold the same values bit for bit (NaN where NaN), recursively
    through dicts, lists and tuples."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def training_state(checkpoint: dict) -> dict:
    """A checkpoint without what differs between two directories holding the same run:
    the wall time, and the run's name and place in its saved config."""
    state = {k: v for k, v in checkpoint.items() if k != "wall_time"}
    if "config" in state:
        state["config"] = {k: v for k, v in state["config"].items() if k not in ("name", "out_dir")}
    return state
