"""Which training labels are wrong: a label-issue report from any run's recorded signals.

``mwnet issues RUN_DIR`` and :func:`find_label_issues` read what a run recorded about
every training sample (:mod:`mwnet.run.signals`) and never retrain.
"""

from mwnet.label_issues.metrics import auroc, precision_at_k, precision_recall
from mwnet.label_issues.report import LabelIssues, find_label_issues
from mwnet.label_issues.score import SIGNALS, flag_issues, quality_scores

__all__ = [
    "SIGNALS",
    "LabelIssues",
    "auroc",
    "find_label_issues",
    "flag_issues",
    "precision_at_k",
    "precision_recall",
    "quality_scores",
]
