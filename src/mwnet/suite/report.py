"""Turn the suite's results into docs/RESULTS.md, its plots and the README table.

Everything here reads each cell's :class:`~mwnet.suite.results.Result` (``summary.json``,
``metrics.jsonl`` and a few numbers derived from the per-sample files), from the run
directories or from the ledger alone (:mod:`mwnet.suite.ledger`), never live training
state, so the report can be regenerated from a finished or partly finished suite at any
time, on any machine that has the ledger. Numbers in the text are
computed, not typed: a hand-written reading between the ``reading`` markers of an existing
RESULTS.md is kept across regenerations, everything else is rewritten.

Every table reports each method at the hyperparameters selected on the validation split
(:mod:`mwnet.suite.selection`); the test set is read for nothing else.

:func:`write_report` ties the parts together: the runs at their selected values
(:mod:`mwnet.suite.runs`), the tables and their numbers (:mod:`mwnet.suite.tables`), the
figures (:mod:`mwnet.suite.plots`) and the page around them (:mod:`mwnet.suite.page`).
The names other code reads from this module are imported here from those.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mwnet.run.atomic import atomic_write
from mwnet.suite.grid import LRS
from mwnet.suite.page import (
    HEADLINE_END,
    HEADLINE_START,
    READING_END,
    READING_START,
    kept_reading,
    render,
    update_readme,
)
from mwnet.suite.page import _method_line as _method_line
from mwnet.suite.page import _timing as _timing
from mwnet.suite.page import _weight_lr_text as _weight_lr_text
from mwnet.suite.plots import (
    plot_accuracy_vs_time,
    plot_auroc,
    plot_class_aware_curves,
    plot_clean_size,
    plot_meta_precision,
    plot_weight_histograms,
    plot_weighting_functions,
)
from mwnet.suite.runs import Results, Run
from mwnet.suite.selection import run_dir_of, state_of
from mwnet.suite.tables import _fmt as _fmt
from mwnet.suite.tables import _paired as _paired
from mwnet.suite.tables import _short_trend as _short_trend
from mwnet.suite.tables import _weight_trend as _weight_trend
from mwnet.suite.tables import (
    full_train_table,
    grid_table,
    headline_table,
    selection_table,
    verdict_table,
)


def write_report(
    out: Path,
    docs: Path,
    command: str,
    scale: Any,
    suite_info: dict[str, Any],
    readme: Path | None = None,
    ledger: Path | None = None,
) -> list[Path]:
    """RESULTS.md and plots in ``docs`` from the runs under ``out``, or from the records of
    ``ledger`` alone where one is given; the README's headline block (between the
    suite-headline markers) when ``readme`` is given."""
    res = Results(out, scale, ledger)
    figures = docs / "results"
    figures.mkdir(parents=True, exist_ok=True)
    written = [
        p
        for p in (
            plot_weighting_functions(res, figures / "weighting_functions.png"),
            plot_class_aware_curves(res, figures / "class_aware_curves.png"),
            plot_clean_size(res, figures / "clean_set_size.png"),
            plot_meta_precision(res, figures / "meta_precision.png"),
            plot_weight_histograms(res, figures / "weight_histograms.png"),
            plot_auroc(res, figures / "auroc.png"),
            plot_accuracy_vs_time(res, figures / "accuracy_vs_time.png"),
        )
        if p is not None
    ]
    results = docs / "RESULTS.md"
    text = render(res, command, scale, suite_info, kept_reading(results), written, docs)
    with atomic_write(results) as f:
        f.write(text)
    written.append(results)
    if readme is not None and readme.is_file():
        update_readme(readme, headline_table(res))
        written.append(readme)
    return written


__all__ = [
    "HEADLINE_END",
    "HEADLINE_START",
    "LRS",
    "READING_END",
    "READING_START",
    "Results",
    "Run",
    "full_train_table",
    "grid_table",
    "headline_table",
    "run_dir_of",
    "selection_table",
    "state_of",
    "verdict_table",
    "write_report",
]
