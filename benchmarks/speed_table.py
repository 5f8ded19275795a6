"""Accuracy against cost for every MW-Net mode and cheap-update variant, from measurements.

Accuracy comes from the evidence suite's run directories (last-epoch test accuracy, mean
± sample std over seeds, per noisy setting); cost from ``mwnet bench epoch --suite ...
--json`` (one epoch of the same cells, in one process, x the CE epoch) and optionally
``mwnet bench step --model resnet32 --json`` (x the plain step). Nothing is run here: the
table is only as good as the files it reads, and it says which ones.

    mwnet suite --settings flip2-40,uniform-60,pair-40 --methods ce,mwnet-fast,... --out OUT
    mwnet bench epoch --suite flip2-40 --variants ce,mwnet-fast,... --meta-interval 1 \\
        --repeats 3 --threads 1 --json > epoch.json
    mwnet bench step --model resnet32 --modes plain,fast,head,partial --meta-interval 5 \\
        --cuts stage3.4,stage2 --threads 1 --no-memory --json > step.json
    python benchmarks/speed_table.py --runs OUT --epoch epoch.json --step step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SETTINGS = ("flip2-40", "uniform-60", "pair-40")
REFERENCE = "mwnet-fast"
"""The exact method each variant is compared with; a variant on the two-hidden-layer MLP
(``-mlp2``) is compared with ``fast`` on that model."""

STEP_MODE = {
    "mwnet-fast": "fast",
    "mwnet-head": "head",
    "mwnet-fast-k5": "fast+interval(5)",
    "mwnet-head-k5": "head+interval(5)",
}
"""Suite methods whose hypergradient mode and interval have a ResNet-32 step row."""


def last_accuracies(runs: Path, setting: str, method: str) -> list[float]:
    """Last-epoch test accuracy of every finished seed of ``method`` in ``setting``."""
    accs = []
    for summary in sorted((runs / setting).glob(f"{method}-seed*/summary.json")):
        data = json.loads(summary.read_text())
        if data.get("epochs_done") == data.get("epochs_total"):
            accs.append(float(data["last_test_acc"]))
    return accs


def cell(accs: list[float]) -> str:
    if not accs:
        return "n/a"
    spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
    collapsed = sum(a < 20 for a in accs)
    note = f" ({collapsed} of {len(accs)} collapsed)" if collapsed else ""
    return f"{statistics.mean(accs):.1f}{spread}{note}"


def table(
    runs: Path, epoch_rows: list[dict], step_rows: list[dict] | None, total: bool = False
) -> str:
    key = "ratio_total" if total else "ratio_to_ce"
    epoch_cost = {r["variant"]: r[key] for r in epoch_rows}
    step_cost = {r["mode"]: r["ratio_to_plain"] for r in step_rows or []}
    cost = "run x CE (suite MLP)" if total else "epoch x CE (suite MLP)"
    head = ["method", *SETTINGS, "mean gap to fast (same model)", cost]
    if step_rows:
        head.append("step x plain (ResNet-32)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in epoch_cost:
        accs = {s: last_accuracies(runs, s, method) for s in SETTINGS}
        ref = REFERENCE + ("-mlp2" if method.endswith("-mlp2") else "")
        reference = {s: last_accuracies(runs, s, ref) for s in SETTINGS}
        gaps = [
            statistics.mean(accs[s]) - statistics.mean(reference[s])
            for s in SETTINGS
            if accs[s] and reference[s]
        ]
        gap = f"{statistics.mean(gaps):+.1f}" if len(gaps) == len(SETTINGS) else "n/a"
        row = [method, *(cell(accs[s]) for s in SETTINGS), gap, f"{epoch_cost[method]:.2f}"]
        if step_rows:
            mode = STEP_MODE.get(method)
            row.append(f"{step_cost[mode]:.2f}" if mode in step_cost else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the suite's --out")
    parser.add_argument("--epoch", type=Path, required=True, help="bench epoch --json output")
    parser.add_argument("--step", type=Path, default=None, help="bench step --json output")
    parser.add_argument(
        "--total",
        action="store_true",
        help="cost of the whole timed run (bench epoch --repeats = the run's epochs), which "
        "counts the epochs after a schedule change or a freeze; default: the median epoch",
    )
    args = parser.parse_args()
    epoch_rows = json.loads(args.epoch.read_text())
    step_rows = json.loads(args.step.read_text()) if args.step else None
    print(table(args.runs, epoch_rows, step_rows, args.total))


if __name__ == "__main__":
    main()
