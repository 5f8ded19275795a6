"""`mwnet bench step` and the CLI wiring; times are never asserted, only shape and baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mwnet.bench import mode_specs
from mwnet.cli import main

TINY = ["bench", "step", "--model", "cnn_small", "--batch", "8", "--meta-batch", "8"]
TINY += ["--repeats", "2", "--warmup", "1", "--threads", "1"]
KEYS = {
    "mode",
    "model",
    "batch",
    "median_ms",
    "ratio_to_plain",
    "peak_mem_mb",
    "peak_mem_ratio",
    "device",
}


def test_bench_step_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["plain", "reverse", "fast"]
    for row in rows:
        assert row.keys() >= KEYS
        assert row["model"] == "cnn_small" and row["batch"] == 8
        assert row["median_ms"] > 0 and row["ratio_to_plain"] > 0
        if sys.platform.startswith("linux"):
            assert row["peak_mem_mb"] >= 0
    assert rows[0]["ratio_to_plain"] == 1.0
    if rows[0]["peak_mem_mb"]:
        assert rows[0]["peak_mem_ratio"] == 1.0


def test_bench_step_interval_table(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY, "--modes", "fast", "--meta-interval", "2", "--no-memory"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fast+interval(2)" in out and "reverse" not in out
    assert "torch" in out and "threads" in out


def test_mode_specs() -> None:
    names = [s.name for s in mode_specs(["fast", "reverse"], meta_interval=3)]
    assert names == ["plain", "reverse", "fast", "reverse+interval(3)", "fast+interval(3)"]
    with pytest.raises(ValueError, match="unknown mode"):
        mode_specs(["slow"])


@pytest.mark.parametrize("argv", [["--help"], ["bench", "step", "--help"], ["bench", "--help"]])
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_bad_mode_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "step", "--modes", "plain,slow"])
    assert info.value.code == 2


def test_python_dash_m_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mwnet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "bench" in done.stdout
