"""`mwnet fit` and the weighting-net variants on the suite's small-data cells.

The cells are the suite's ``small-flip2-40`` setting at the full scale (1,000 training
images, 100 trusted, a 200-image validation split, flip2 noise 40 %, the suite's MLP and
schedule), seeds 0-4, exactly as ``mwnet suite`` makes them
(:func:`mwnet.suite.grid.cell_overrides`). Two parts:

* ``--part fit``: ``mwnet fit`` with its default candidates on each seed (the cell's
  config without its ``method.*`` keys); prints, per seed, what it shipped and every
  candidate's validation and test accuracy.
* ``--part variants``: MW-Net (fast) with each variant's overrides on each seed, and CE;
  prints the weight AUROC (a low final weight as a detector of a corrupted label, from
  the true labels: never used by the runs) and the last-epoch test accuracy.

Every run trains in its own directory under ``--out`` (default a temporary one), one
thread; a rerun with the same ``--out`` reads finished runs. docs/FIT.md reports these.

    PYTHONPATH=src python benchmarks/bench_fit_small.py --part fit --out /tmp/fit-small
    PYTHONPATH=src python benchmarks/bench_fit_small.py --part variants --out /tmp/fit-small
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from mwnet.machine import cpu_model

VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "net lr 1e-2": ("method.mwnet.net_lr=0.01",),
    "net lr 1e-4": ("method.mwnet.net_lr=0.0001",),
    "flat start": ("method.mwnet.net_init=flat",),
    "loss + loss_history": ("method.mwnet.inputs=[loss,loss_history]",),
    "loss + dynamics": ("method.mwnet.inputs=[loss,agreement,margin,loss_ema]",),
    "meta-sign gate": ("method.mwnet.gate=meta-sign",),
    **{
        f"loss + {x}": (f"method.mwnet.inputs=[loss,{x}]",)
        for x in ("margin", "loss_ema", "agreement", "confidence", "loss_rank", "class")
    },
}


def _cell(method: str, seed: int) -> tuple[str, ...]:
    from mwnet.suite import grid

    setting = grid.setting_named("small-flip2-40")
    spec = grid.method_named(method)
    candidate = grid.candidates(setting, spec, grid.FULL)[0]
    return grid.cell_overrides(grid.FULL, setting, spec, seed, candidate, None)


def part_fit(out: Path, seeds: list[int], jobs: int) -> None:
    from mwnet.fitting.pipeline import fit

    for seed in seeds:
        shared = [o for o in _cell("ce", seed) if not o.startswith("method.")]
        with contextlib.redirect_stdout(sys.stderr):
            result = fit(
                None,
                [*shared, f"out_dir={out}/fit", "threads=1"],
                jobs=jobs,
                name=f"seed{seed}",
                montage=0,
            )
        shipped = result.chosen.candidate.name if result.chosen else None
        rows = "; ".join(
            f"{e.candidate.name} {e.val_acc if e.val_acc is None else round(e.val_acc, 1)}"
            f"/{e.test_acc}{' (' + e.excluded + ')' if e.excluded else ''}"
            for e in result.entries
        )
        print(f"seed {seed}: shipped {shipped}; val/test: {rows}", flush=True)


def part_variants(out: Path, seeds: list[int], names: list[str]) -> None:
    from mwnet.suite.results import derive
    from mwnet.train import loop
    from mwnet.train.config import load_config

    print("| variant | weight AUROC per seed | mean test acc |")
    print("|---|---|---|")
    for name in names:
        aurocs, accs = [], []
        for seed in seeds:
            base = _cell("ce", seed) if name == "ce" else _cell("mwnet-fast", seed)
            extra = () if name == "ce" else VARIANTS[name]
            run = f"{name.replace(' ', '_').replace('+', 'and')}-s{seed}"
            cfg = load_config(
                None, [*base, *extra, f"out_dir={out}/variants", f"name={run}", "threads=1"]
            )
            with contextlib.redirect_stdout(sys.stderr):
                summary, run_dir, _ = loop.train_to_end(cfg, quiet=True)
            aurocs.append(derive(run_dir, summary).get("weight_auroc"))
            accs.append(float(summary["last_test_acc"]))
        shown = ", ".join("n/a" if a is None else f"{a:.2f}" for a in aurocs)
        print(f"| {name} | {shown} | {statistics.mean(accs):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("fit", "variants"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "ce"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS and v != "ce"]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}, ce")
    print(f"# {cpu_model()}, small-flip2-40, seeds {args.seeds}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.part == "fit":
            part_fit(out, args.seeds, args.jobs)
        else:
            part_variants(out, args.seeds, args.variants)


if __name__ == "__main__":
    main()
