"""``mwnet fit``: the command line of :func:`mwnet.fitting.pipeline.fit`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_fit(sub: argparse._SubParsersAction) -> None:
    from mwnet.argtypes import non_negative_int, positive_int

    p = sub.add_parser(
        "fit",
        help="train the candidate methods, find the label issues, and ship the model chosen "
        "on validation data",
        description="From noisy labels to one model file: train the candidates (learned "
        "weighting, L2RW, fine-tuning on the trusted set, GLC, ELR, CE, ...) on the same "
        "data, split and seed; find the label issues in the best weighting run; retrain "
        "without them and fine-tune its model; then choose on a validation split of the "
        "noisy training data (the default candidate unless another is ahead by more than "
        "the split's paired sampling error) and copy its model to OUT_DIR/<name>/model.pt "
        "for `mwnet predict`. Without a trusted set (data.meta_source=auto) the candidates "
        "are the methods that need none. Running it again continues where it stopped.",
    )
    p.add_argument("--preset", help="preset name (see `mwnet presets`)")
    p.add_argument("--config", metavar="FILE", type=Path, help="start from a saved config")
    p.add_argument(
        "--candidates",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        help="comma list in order of preference, the first is the default the margin rule "
        "keeps (default: finetune-best,l2rw,finetune,glc,retrain,elr,mwnet,ce with a "
        "trusted set; cmwnet-sl,elr,retrain,gce,ce without); any method name works too",
    )
    p.add_argument(
        "--jobs", type=positive_int, default=min(2, os.cpu_count() or 1), help="runs at a time"
    )
    p.add_argument("--name", help="directory under out_dir (default <preset>-fit-seed<seed>)")
    p.add_argument(
        "--top", type=non_negative_int, default=36, help="images in the label-issue montage"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from mwnet.fitting.pipeline import fit
    from mwnet.fitting.report import failure_line

    if not args.preset and not args.config and not args.overrides:
        raise ValueError("give --preset NAME (see `mwnet presets`), --config FILE or overrides")
    result = fit(
        args.preset,
        list(args.overrides),
        base=args.config,
        candidates=args.candidates,
        jobs=args.jobs,
        name=args.name,
        montage=args.top,
    )
    failed = failure_line(result)
    if failed:
        print(failed, file=sys.stderr)
        return 2
    return 0
