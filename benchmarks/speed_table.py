"""Accuracy against cost for every MW-Net mode and cheap-update variant, from measurements.

Accuracy comes from the evidence suite's run directories or its ledger records
(last-epoch test accuracy, mean ± sample std over seeds, per noisy setting); cost from
``mwnet bench epoch --suite ... --json`` (one epoch of the same cells, in one process, x the
CE epoch; with ``--total`` and as many ``--repeats`` as the run has epochs, the whole run)
and optionally ``mwnet bench step --model resnet32 --json`` (x the plain step). Nothing is
run here: the table is only as good as the files it reads, and it says which ones. Below
the table, the variants that meet the target: within ``--target-gap`` points of
``mwnet-fast`` in every setting at no more than ``--target-cost`` x CE.

    mwnet suite --settings flip2-40,uniform-60,pair-40 --methods ce,mwnet-fast,... --out OUT
    mwnet bench epoch --suite flip2-40 --variants ce,mwnet-fast,... --meta-interval 1 \\
        --repeats 3 --threads 1 --json > epoch.json
    mwnet bench step --model resnet32 --modes plain,fast,head,partial --meta-interval 5 \\
        --cuts stage3.4,stage2 --threads 1 --no-memory --json > step.json
    python benchmarks/speed_table.py --runs OUT --epoch epoch.json --step step.json

The small-CNN regime (``cnn-flip2-40``, ``cnn-pair-40``: 10 epochs, so 10 rounds time a
whole run), from the committed ledger:

    mwnet bench epoch --suite cnn-flip2-40 --variants ce,mwnet-fast,mwnet-famus,\\
        mwnet-partial,mwnet-head,mwnet-fast-k5,mwnet-partial-k5,mwnet-head-k5 \\
        --meta-interval 1 --repeats 10 --threads 1 --json > epoch.json
    python benchmarks/speed_table.py --settings cnn-flip2-40,cnn-pair-40 \\
        --ledger results/ledger --epoch epoch.json --total
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SETTINGS = ("flip2-40", "uniform-60", "pair-40")
"""The settings of the MLP comparison (docs/PERFORMANCE.md), the default of ``--settings``."""
REFERENCE = "mwnet-fast"
"""The exact method each variant is compared with; a variant on the two-hidden-layer MLP
(``-mlp2``) is compared with ``fast`` on that model."""

COLLAPSED = 20.0
"""Last-epoch test accuracy (%) below which a Fashion-MNIST run counts as collapsed (chance
is 10 %: a model that answers one class)."""

STEP_MODE = {
    "mwnet-fast": "fast",
    "mwnet-head": "head",
    "mwnet-fast-k5": "fast+interval(5)",
    "mwnet-head-k5": "head+interval(5)",
    "mwnet-famus": "famus",
    "mwnet-partial": "partial",
    "mwnet-partial-k5": "partial+interval(5)",
}
"""Suite methods whose hypergradient mode and interval have a ResNet-32 step row."""


TARGET_GAP = 0.5
"""Points of last-epoch accuracy a variant may lose to ``mwnet-fast``, in every setting."""
TARGET_COST = 1.5
"""Its cost in CE's, at most (the cost column's: an epoch, or with ``--total`` a run)."""


@dataclass(frozen=True)
class Source:
    """Where the accuracies come from: the suite's run directories (``--runs``, each run's
    ``summary.json``) or its ledger (``--ledger``, one record a run, the summary inside)."""

    path: Path
    ledger: bool = False

    def summaries(self, setting: str, method: str) -> list[dict]:
        """The summaries of ``method``'s runs at its default values (no hyperparameter tag
        in the name), in ``setting``, seed order."""
        if self.ledger:
            found = sorted((self.path / setting).glob(f"{method}-seed*.json"), key=_seed)
            records = [json.loads(f.read_text()) for f in found]
            return [r["summary"] for r in records if r.get("status") == "finished"]
        found = sorted((self.path / setting).glob(f"{method}-seed*/summary.json"), key=_seed)
        return [json.loads(f.read_text()) for f in found]


def _seed(path: Path) -> int:
    """The seed in a run's name (``...-seed12`` or ``...-seed12.json``), for seed order."""
    name = path.parent.name if path.name == "summary.json" else path.stem
    return int(name.rpartition("-seed")[2])


def last_accuracies(source: Source | Path, setting: str, method: str) -> list[float]:
    """Last-epoch test accuracy of every finished seed of ``method`` in ``setting``, in seed
    order (a bare path: run directories)."""
    if isinstance(source, Path):
        source = Source(source)
    return [
        float(data["last_test_acc"])
        for data in source.summaries(setting, method)
        if data.get("epochs_done") == data.get("epochs_total")
    ]


def cell(accs: list[float]) -> str:
    if not accs:
        return "n/a"
    spread = f" ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else ""
    collapsed = sum(a < COLLAPSED for a in accs)
    note = f" ({collapsed} of {len(accs)} collapsed)" if collapsed else ""
    return f"{statistics.mean(accs):.1f}{spread}{note}"


def gaps_to_reference(
    source: Source | Path, settings: Sequence[str], method: str
) -> list[float] | None:
    """Per setting, the method's mean last-epoch accuracy minus ``mwnet-fast``'s on the same
    model; None unless both have runs in every setting."""
    ref = REFERENCE + ("-mlp2" if method.endswith("-mlp2") else "")
    gaps = []
    for s in settings:
        accs, reference = last_accuracies(source, s, method), last_accuracies(source, s, ref)
        if not accs or not reference:
            return None
        gaps.append(statistics.mean(accs) - statistics.mean(reference))
    return gaps


def _cost_label(epoch_rows: list[dict], total: bool) -> str:
    model = epoch_rows[0].get("model", "mlp") if epoch_rows else "mlp"
    shown = {"mlp": "MLP"}.get(model, model)
    return f"{'run' if total else 'epoch'} x CE (suite {shown})"


def table(
    runs: Source | Path,
    epoch_rows: list[dict],
    step_rows: list[dict] | None,
    total: bool = False,
    settings: Sequence[str] = SETTINGS,
) -> str:
    key = "ratio_total" if total else "ratio_to_ce"
    epoch_cost = {r["variant"]: r[key] for r in epoch_rows}
    step_cost = {r["mode"]: r["ratio_to_plain"] for r in step_rows or []}
    head = ["method", *settings, "mean gap to fast (same model)", _cost_label(epoch_rows, total)]
    if step_rows:
        head.append("step x plain (ResNet-32)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in epoch_cost:
        accs = {s: last_accuracies(runs, s, method) for s in settings}
        gaps = gaps_to_reference(runs, settings, method)
        gap = f"{statistics.mean(gaps):+.1f}" if gaps else "n/a"
        row = [method, *(cell(accs[s]) for s in settings), gap, f"{epoch_cost[method]:.2f}"]
        if step_rows:
            mode = STEP_MODE.get(method)
            row.append(f"{step_cost[mode]:.2f}" if mode in step_cost else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def meets_target(
    runs: Source | Path,
    epoch_rows: list[dict],
    total: bool = False,
    settings: Sequence[str] = SETTINGS,
    gap: float = TARGET_GAP,
    cost: float = TARGET_COST,
) -> list[str]:
    """The variants (not ``ce`` nor the reference) whose mean accuracy is within ``gap``
    points of ``mwnet-fast``'s in every setting, with no collapsed seed, at no more than
    ``cost`` x CE."""
    key = "ratio_total" if total else "ratio_to_ce"
    met = []
    for row in epoch_rows:
        method = row["variant"]
        if method in ("ce", "ce-mlp2", REFERENCE, REFERENCE + "-mlp2"):
            continue  # the baselines themselves
        gaps = gaps_to_reference(runs, settings, method)
        collapsed = any(a < COLLAPSED for s in settings for a in last_accuracies(runs, s, method))
        ratio = row[key]
        if gaps and not collapsed and min(gaps) >= -gap and ratio is not None and ratio <= cost:
            met.append(method)
    return met


def target_line(
    runs: Source | Path,
    epoch_rows: list[dict],
    total: bool = False,
    settings: Sequence[str] = SETTINGS,
    gap: float = TARGET_GAP,
    cost: float = TARGET_COST,
) -> str:
    met = meets_target(runs, epoch_rows, total, settings, gap, cost)
    what = "run" if total else "epoch"
    text = (
        f"Target (within {gap:g} points of {REFERENCE} in each of {', '.join(settings)}, no "
        f"seed collapsed, at <= {cost:g}x CE's {what}): "
        + (f"met by {', '.join(met)}." if met else "met by none.")
    )
    ce = gaps_to_reference(runs, settings, "ce")
    if ce and min(ce) >= -gap:  # then losing the weighting's gain costs nothing here
        text += (
            f" But ce is within {gap:g} points of {REFERENCE} too: these settings cannot tell "
            "a variant that keeps the weighting's gain from one that loses it."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--runs", type=Path, help="the suite's --out (its run directories)")
    where.add_argument("--ledger", type=Path, help="the suite's ledger (e.g. results/ledger)")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma list of suite settings (default {','.join(SETTINGS)}; the small-CNN "
        "regime: cnn-flip2-40,cnn-pair-40)",
    )
    parser.add_argument("--target-gap", type=float, default=TARGET_GAP)
    parser.add_argument("--target-cost", type=float, default=TARGET_COST)
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
    source = Source(args.ledger, ledger=True) if args.ledger else Source(args.runs)
    settings = tuple(s for s in args.settings.split(",") if s)
    print(table(source, epoch_rows, step_rows, args.total, settings))
    print()
    print(target_line(source, epoch_rows, args.total, settings, args.target_gap, args.target_cost))


if __name__ == "__main__":
    main()
