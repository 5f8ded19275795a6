"""The examples run as shipped, and what they print shows what they claim."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"\d+\.\d+", line)]


def test_quickstart_separates_wrong_labels(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    weights, accuracy = capsys.readouterr().out.strip().splitlines()
    clean, wrong = _numbers(weights)
    assert wrong < 0.5 * clean, weights
    assert _numbers(accuracy)[0] > 0.9, accuracy


def test_class_aware_example_learns_and_its_frozen_net_beats_plain_training(capsys):
    runpy.run_path(str(EXAMPLES / "class_aware.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "classes per cluster (largest first): [2, 1, 1]"
    clean, wrong = _numbers(lines[1])
    assert wrong < 0.5 * clean, lines[1]
    (frozen,), (plain,) = _numbers(lines[2]), _numbers(lines[3])
    assert frozen > plain + 0.05, lines[2:]


def test_custom_loop_trains_records_and_finds_the_wrong_labels(capsys):
    runpy.run_path(str(EXAMPLES / "custom_loop.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:8]] == [f"epoch {e}" for e in range(1, 9)]
    assert _numbers(lines[7])[0] > 0.9, lines[7]
    clean, wrong = _numbers(lines[8])
    assert wrong < 0.6 * clean, lines[8]
    estimated, true, precision = _numbers(lines[9])
    assert abs(estimated - true) < 0.05 and precision > 0.85, lines[9]
