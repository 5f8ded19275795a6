"""MW-Net's own defaults under the suite's selection protocol, one change at a time.

Each variant is a suite method (``src/mwnet/suite/grid.py``) searched exactly as MW-Net
(fast) is: every learning-rate candidate on the first seed, the one with the best last-
epoch accuracy on the noisy validation split trained on the other seeds. The variants:
the weighting net started flat (``method.mwnet.net_init=flat``: every weight 0.5 at the
start instead of the seed's random slope); its Adam at 1e-4 instead of 1e-3 where labels
are noisy or clean, and at 3e-3 and 1e-2 on the small-data setting (whose 300 steps give
the net few updates to learn in); meta batches of 25 and 400 instead of 100 (400 only
where the clean set has 1,000 images). MW-Net (fast) itself is rerun in the same
directory, so every difference is paired by seed on one machine and one code version.
Runs go through ``mwnet suite`` (two at a time, one thread each; finished runs are read,
interrupted ones resumed), which also writes its own report to ``OUT/docs``.

Prints, per setting and variant, last-epoch test accuracy, the per-seed difference to MW-Net
(fast), and per seed the learned curve's direction and the AUROC of its weights for the
corrupted labels (the instability the suite reports).

    PYTHONPATH=src python benchmarks/bench_mwnet_defaults.py --out runs/defaults
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from mwnet.suite.grid import FULL, setting_named
from mwnet.suite.report import Results, _fmt, _paired, _short_trend, _weight_trend

BASE = "mwnet-fast"
SETTINGS = ("clean", "flip2-40", "uniform-60", "lt-100", "lt-100-flip2-20", "small-flip2-40")
THOUSAND_CLEAN = ("clean", "flip2-40", "uniform-60")
ADAM_SETTINGS = tuple(s for s in SETTINGS if s != "lt-100")
GROUPS = (
    (("mwnet-fast-flat", "mwnet-fast-mb25"), SETTINGS),
    (("mwnet-fast-mb400",), THOUSAND_CLEAN),
    (("mwnet-fast-wlr0.0001",), ADAM_SETTINGS),
    (("mwnet-fast-wlr0.003", "mwnet-fast-wlr0.01"), ("small-flip2-40",)),
)
"""(variants, settings): a meta batch of 400 would repeat samples from a 100-image set;
the pure long tail's weighting net is SGD (1e-5), not the Adam whose rate is varied."""


def run_suite(out: Path, jobs: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for variants, settings in GROUPS:
        cmd = [
            *(sys.executable, "-m", "mwnet", "suite"),
            *("--methods", ",".join((BASE, *variants))),
            *("--settings", ",".join(settings)),
            *("--out", str(out), "--docs", str(out / "docs"), "--jobs", str(jobs)),
        ]
        subprocess.run(cmd, check=True, env=env)


def table(out: Path) -> str:
    res = Results(out, FULL)
    lines = [
        "| setting | method | selected | last-epoch acc % | minus MW-Net (fast), per seed "
        "| learned curve per seed | AUROC of the weights per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = [v for group, _ in GROUPS for v in group]
    for setting in SETTINGS:
        base = res.select(setting, BASE)
        for method in (BASE, *variants):
            runs = sorted(res.select(setting, method), key=lambda r: r.seed)
            if not runs:
                continue
            chosen = res.selection(setting, method).chosen
            diff = "" if method == BASE else _fmt(_paired(runs, base))
            trends = ", ".join(_short_trend(_weight_trend(r)) for r in runs)
            aurocs = ", ".join("n/a" if r.auroc is None else f"{r.auroc:.2f}" for r in runs)
            lines.append(
                f"| {setting_named(setting).title} | {method} | "
                f"{chosen.tag if chosen else 'n/a'} | {_fmt([r.last for r in runs], 1)} | "
                f"{diff} | {trends} | {aurocs} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/defaults"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_suite(args.out, args.jobs)
    print(table(args.out))


if __name__ == "__main__":
    main()
