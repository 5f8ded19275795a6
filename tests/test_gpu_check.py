"""benchmarks/gpu_check.py on the CPU (``--device cpu --quick``): the run passes and prints
its one table; one hypergradient perturbed by a part in a million makes it exit 1 and fail
exactly the rows that compare that hypergradient. Times are never asserted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> tuple[int, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def _rows(lines: list[str], header: str) -> dict[str, tuple[str, str]]:
    """Row name -> (section, status), read by the table's fixed columns."""
    start = lines.index(header) + 1
    status_at = header.index("status")
    rows = {}
    for line in lines[start:]:
        if line.startswith("gpu_check:"):
            break
        rows[line[8:48].strip()] = (line[:8].strip(), line[status_at:].split()[0])
    return rows


def test_the_quick_run_passes_and_prints_one_table():
    gpu_check = _script()
    code, lines = _run("--models", "wrn-10-1", "--batch", "2")
    assert code == 0, "\n".join(lines)
    rows = _rows(lines, gpu_check.HEADER)
    sections = [section for section, _ in rows.values()]
    assert sections.count("exact") == len(gpu_check.PAIRS) + 2 * 4  # 4 modes x 2 directions
    assert sections.count("step") == 2  # fast and reverse; no TF32 row on the CPU
    assert rows["2 ranks (NCCL) vs 1 process"] == ("ranks", "skipped")
    for variant in ("fp32", "bf16"):
        for mode in gpu_check.COST_MODES:
            assert rows[f"wrn-10-1 {variant} {mode}"] == ("cost", "info")
    checks = [status for section, status in rows.values() if section in ("exact", "step")]
    assert set(checks) == {"ok"}
    assert lines[-1].startswith("gpu_check: all checks passed")


def test_a_planted_mismatch_fails_the_run():
    """``fast``'s hypergradient times 1 + 1e-6: its row against ``reverse`` fails (the
    bound there is ten times a reordering's noise, about 1e-15 relative) and only that row
    (the central differences are good to 1e-8 of 4e-3 here: a part in a million is below
    them), and the time guard (budget 0) skips every cost block with a line."""
    gpu_check = _script()
    code, lines = _run("--plant", "fast", "--budget", "0")
    assert code == 1, "\n".join(lines)
    rows = _rows(lines, gpu_check.HEADER)
    assert rows["fast vs reverse"] == ("exact", "FAIL")
    for name, (section, status) in rows.items():
        if section in ("cost", "ranks"):
            assert status == "skipped", name
        elif name != "fast vs reverse":
            assert status == "ok", name
    assert lines[-1].startswith("gpu_check: 1 failed")
