"""MW-Net's weight normalisation against accuracy: the suite's own cells, one key changed.

Training runs on the evidence suite's MW-Net (fast) cell overrides of each setting and
seed, with ``method.normalize`` set to each value asked for, plus a CE run on the clean
setting for reference; two runs at a time, one thread each. Run directories under
``--out`` are reused (a finished run is only read, an unfinished one resumed, one of
another config refused), so an interrupted benchmark resumes.
Prints last-epoch test accuracy, mean ± std over seeds, per setting and normalisation.

    PYTHONPATH=src python benchmarks/bench_normalization.py --out runs/normalization
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mwnet.suite.grid import FULL, cells


def jobs(out: Path, settings: list[str], modes: list[str]) -> list[tuple[Path, list[str]]]:
    """``(run_dir, config overrides)`` for every setting, seed and normalisation."""
    todo = []
    for setting in settings:
        for cell in cells(FULL, (setting,), ("mwnet-fast",)):
            variants = {f"mwnet-{mode}": [f"method.mwnet.normalize={mode}"] for mode in modes}
            if setting == "clean":
                variants["ce"] = ["method.name=ce"]
            for name, extra in variants.items():
                run_dir = out / setting / f"{name}-seed{cell.seed}"
                where = [f"out_dir={run_dir.parent}", f"name={run_dir.name}"]
                todo.append((run_dir, [*cell.overrides, *extra, *where]))
    return todo


TRAIN_TO_END = (
    "import sys\n"
    "from mwnet.train import loop\n"
    "from mwnet.config import load_config\n"
    "loop.train_to_end(load_config(None, sys.argv[1:]))\n"
)
"""Start, resume or only read the run, refusing a directory that holds another config."""


def run(job: tuple[Path, list[str]]) -> str:
    run_dir, overrides = job
    cmd = [sys.executable, "-c", TRAIN_TO_END, *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return f"{run_dir}: FAILED {done.stderr.strip().splitlines()[-1:]}"
    return f"{run_dir}: finished"


def table(out: Path, settings: list[str]) -> str:
    lines = ["| setting | run | last-epoch test acc % | seeds |", "|---|---|---|---|"]
    for setting in settings:
        accs: dict[str, list[float]] = {}
        for summary in sorted((out / setting).glob("*-seed*/summary.json")):
            data = json.loads(summary.read_text())
            if data.get("finished"):
                name = summary.parent.name.rsplit("-seed", 1)[0]
                accs.setdefault(name, []).append(float(data["last_test_acc"]))
        for name, values in accs.items():
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            mean = statistics.mean(values)
            lines.append(f"| {setting} | {name} | {mean:.1f}{spread} | {len(values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/normalization"))
    parser.add_argument("--settings", default="clean,flip2-40,uniform-60,pair-40")
    parser.add_argument("--modes", default="sum,mean,sum-detached", help="method.normalize")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    settings = args.settings.split(",")
    if not args.report_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(run, jobs(args.out, settings, args.modes.split(","))):
                print(line, flush=True)
    print(table(args.out, settings))


if __name__ == "__main__":
    main()
