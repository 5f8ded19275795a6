"""What `mwnet fit` would ship, replayed from the suite's ledger records (no training).

The ledger (``results/ledger/<setting>/``) holds each cell's summary but not the per-image
validation answers fit's paired rule reads, so this brackets it: the margin rule with the
suite's unpaired error (wider than the paired one: it keeps the default more often), and
with no margin at all (the highest validation accuracy). Candidates are fit's defaults
with a trusted set, as the suite names their cells; the retraining is not in the ledger.
A record whose weights the run's self-check flagged is not a candidate, as in fit.

    PYTHONPATH=src python benchmarks/fit_from_ledger.py instance-40 annotator-40
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mwnet.suite.selection import sampling_error

LEDGER = Path(__file__).resolve().parent.parent / "results" / "ledger"
CANDIDATES = (
    ("finetune-best", "mwnet-fast-finetune-ftlr0.001"),
    ("l2rw", "l2rw-lr0.01"),
    ("finetune", "finetune-lr0.05-ftlr0.001"),
    ("glc", "glc-lr0.05-tw1"),
    ("elr", "elr-lr0.05-lam3"),
    ("mwnet", "mwnet-fast-lr0.05-wlr0.001"),
    ("ce", "ce-lr0.05"),
)
"""fit's default candidates and the ledger cells at fit's default hyperparameters."""


def _summary(path: Path) -> dict | None:
    return json.loads(path.read_text())["summary"] if path.is_file() else None


def replay(setting: str, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    print(f"## {setting}")
    tests: dict[str, list[float]] = {name: [] for name, _ in CANDIDATES}
    picks: dict[str, list[tuple[str, float]]] = {"unpaired margin": [], "no margin": []}
    for seed in seeds:
        vals: list[tuple[float, float] | None] = []
        for name, stem in CANDIDATES:
            s = _summary(LEDGER / setting / f"{stem}-seed{seed}.json")
            if s is None:
                vals.append(None)
                continue
            tests[name].append(float(s["last_test_acc"]))
            flagged = bool((s.get("weight_check") or {}).get("favours_suspect_labels"))
            vals.append(None if flagged else (s["last_val_acc"], s["last_test_acc"]))
        present = [k for k, v in enumerate(vals) if v is not None]
        default, best = present[0], max(present, key=lambda k: (vals[k][0], -k))
        error = sampling_error(vals[default][0], vals[best][0], 1000)
        kept = best if vals[best][0] - vals[default][0] > error else default
        picks["unpaired margin"].append((CANDIDATES[kept][0], vals[kept][1]))
        picks["no margin"].append((CANDIDATES[best][0], vals[best][1]))
    for name, values in tests.items():
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{name}: {statistics.mean(values):.2f} ± {spread:.2f} ({len(values)} seeds)")
    for rule, chosen in picks.items():
        mean = statistics.mean(t for _, t in chosen)
        print(f"fit, {rule}: {mean:.2f} ({', '.join(f'{n} {t}' for n, t in chosen)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+")
    for setting in parser.parse_args().settings:
        replay(setting)


if __name__ == "__main__":
    main()
