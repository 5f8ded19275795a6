"""``mwnet issues RUN_DIR``: the label-issue report of a run, in files and in the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _threshold(text: str) -> float | str:
    if text in ("auto", "mixture"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number in [0, 1], 'auto' or 'mixture', got {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def add_issues(sub: argparse._SubParsersAction) -> None:
    from mwnet.argtypes import non_negative_int
    from mwnet.label_issues.score import SIGNALS

    p = sub.add_parser(
        "issues",
        help="which training labels are likely wrong, from a finished (or running) run",
        description="Score every training sample of a run by what the run recorded about it "
        "(no retraining, no clean labels), flag the likely wrong labels, estimate the noise "
        "rate overall and per class, and write label_issues.csv, label_issues.json and a "
        "montage of the most suspicious images (label_issues.png) into the run directory. "
        "Train again without them with data.exclude=RUN_DIR/label_issues.csv, or with the "
        "likely labels with data.relabel=RUN_DIR/label_issues.csv.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--signal",
        choices=SIGNALS,
        default="auto",
        help="what scores a sample (default auto: how often the model agreed with the label)",
    )
    p.add_argument(
        "--threshold",
        type=_threshold,
        default="auto",
        help="flag scores below this, or 'mixture' for a two-component fit (default auto: 0.5, "
        "and the two-component fit for --signal weight, whose scale is the weighting net's)",
    )
    p.add_argument(
        "--top",
        type=non_negative_int,
        default=36,
        help="images in the montage (default 36; 0: none)",
    )
    p.add_argument("--out", type=Path, help="write the files here instead of the run directory")
    p.set_defaults(func=run_issues)


def write_report(
    run_dir: Path,
    out: Path,
    *,
    signal: str = "auto",
    threshold: float | str = "auto",
    montage: int = 36,
):
    """The label-issue report of ``run_dir`` written into ``out``: the CSV, the JSON
    summary and (``montage`` > 0) the picture of the most suspicious images. A picture
    left in ``out`` by an earlier report is removed when no new one is drawn: it would
    show another report's images beside this one's files.

    Returns:
        ``(issues, written)``: the :class:`~mwnet.label_issues.LabelIssues` and the files.
    """
    from mwnet.data import DataError
    from mwnet.data.label_edits import ISSUES_FILE
    from mwnet.label_issues.montage import MONTAGE_FILE, suspicious_images, write_montage
    from mwnet.label_issues.report import SUMMARY_FILE, find_label_issues
    from mwnet.run.saved_config import run_config

    cfg = run_config(run_dir)
    issues = find_label_issues(run_dir, signal=signal, threshold=threshold)
    out.mkdir(parents=True, exist_ok=True)
    issues.write_csv(out / ISSUES_FILE)
    issues.write_summary(out / SUMMARY_FILE)
    written = [out / ISSUES_FILE, out / SUMMARY_FILE]
    if montage and issues.ids is None:  # a table's rows are no pictures
        try:
            positions, images = suspicious_images(issues, cfg, montage)
            written.append(write_montage(out / MONTAGE_FILE, issues, positions, images))
        except (DataError, FileNotFoundError, OSError) as err:
            print(f"mwnet: no montage: cannot read the images again ({err})", file=sys.stderr)
    if out / MONTAGE_FILE not in written:
        (out / MONTAGE_FILE).unlink(missing_ok=True)
    return issues, written


def run_issues(args: argparse.Namespace) -> int:
    from mwnet.data.label_edits import ISSUES_FILE
    from mwnet.run.saved_config import CONFIG_FILE

    run_dir, out = args.run_dir, args.out or args.run_dir
    issues, written = write_report(
        run_dir, out, signal=args.signal, threshold=args.threshold, montage=args.top
    )
    print(issues.headline())
    print(f"  wrote {', '.join(str(p) for p in written)}")
    csv_file = out / ISSUES_FILE
    config = run_dir / CONFIG_FILE
    print(
        f"  train without them: mwnet train --config {config} data.exclude={csv_file}\n"
        f"  or with the likely labels: mwnet train --config {config} data.relabel={csv_file}"
    )
    return 0
