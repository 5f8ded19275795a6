"""The label-issue report of a run: scores, flags, noise-rate estimates and files.

:func:`find_label_issues` turns a run's recorded signals (``signals.npz`` in its run
directory, or a :class:`~mwnet.run.signals.SampleSignals` filled by your own loop) into a
:class:`LabelIssues`: one score per training sample (low = likely wrong), a flag per
sample, the estimated noise rate overall and per class, the likely label of every flagged
sample and a "given -> likely" summary. Nothing here retrains or reads a clean label; when
the run's noise was synthetic, the truth it recorded is used only to say how well the
report did (:meth:`LabelIssues.evaluation`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.data.label_edits import (
    FLAG_COLUMN,
    GIVEN_COLUMN,
    ID_COLUMN,
    INDEX_COLUMN,
    ISSUES_FILE,
    LIKELY_COLUMN,
    SOURCE_KEY,
    SUMMARY_FILE,
    record_fingerprint,
)
from mwnet.label_issues.metrics import auroc, precision_at_k, precision_recall
from mwnet.label_issues.provenance import check_signals_of_run, run_paths
from mwnet.label_issues.score import (
    AUTO_THRESHOLD,
    Scores,
    few_passes_warning,
    flag_issues,
    quality_scores,
    resolve_threshold,
)
from mwnet.run.atomic import atomic_write
from mwnet.run.records import write_json
from mwnet.run.signals import SIGNALS_FILE, SampleSignals

__all__ = ["SUMMARY_FILE", "LabelIssues", "find_label_issues", "issues_file"]


@dataclass(frozen=True)
class LabelIssues:
    """What a run's signals say about each training sample's label.

    Arrays have one entry per training sample, in the run's training-set order.
    """

    index: np.ndarray
    """Each sample's index in the dataset's training split (stable across runs)."""
    given: np.ndarray
    likely: np.ndarray
    """The model's label for the sample: the given one where it is not flagged, the class
    it preferred over the given one in most evaluation passes where it is (-1: unknown,
    the run made no evaluation pass)."""
    scores: Scores
    flagged: np.ndarray
    threshold: float | str
    num_classes: int
    classes: list[str] | None = None
    paths: list[str] | None = None
    ids: list[str] | None = None
    """Each sample's id, for a table (``data.dataset=table``); None otherwise."""
    corrupted: np.ndarray | None = None
    """The truth, where the noise was synthetic; used only by :meth:`evaluation`."""
    true: np.ndarray | None = None
    """The true labels, where the noise was synthetic (reported, never used)."""
    warnings: tuple[str, ...] = ()
    """Why the report is not to be trusted as it is (printed and kept in the summary)."""
    source: dict[str, Any] | None = None
    """The record the report was made from (see :data:`~mwnet.data.label_edits.SOURCE_KEY`):
    what tells a later reader whether the report still describes its run."""

    # -- what the report estimates ------------------------------------------------------
    @property
    def score(self) -> np.ndarray:
        """Label quality in [0, 1]; low = likely wrong."""
        return self.scores.values

    @property
    def noise_rate(self) -> float:
        """Estimated share of wrong labels: the flagged share."""
        return float(self.flagged.mean()) if len(self.flagged) else 0.0

    def class_noise_rates(self) -> np.ndarray:
        """Estimated share of wrong labels among the samples given each class (NaN for a
        class no sample is given)."""
        counts = np.bincount(self.given, minlength=self.num_classes).astype(np.float64)
        flagged = np.bincount(self.given[self.flagged], minlength=self.num_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            return flagged / counts

    def ranked(self) -> np.ndarray:
        """Sample positions, most suspicious first (lowest score; ties by position)."""
        return np.argsort(self.score, kind="stable")

    def confusion(self) -> list[tuple[int, int, int]]:
        """``(given, likely, count)`` over the flagged samples, most frequent first."""
        given, likely = self.given[self.flagged], self.likely[self.flagged]
        known = likely >= 0
        pairs = given[known] * self.num_classes + likely[known]
        values, counts = np.unique(pairs, return_counts=True)
        order = np.lexsort((values, -counts))
        k = self.num_classes
        return [(int(values[i] // k), int(values[i] % k), int(counts[i])) for i in order]

    def evaluation(self) -> dict[str, float] | None:
        """Against the recorded truth (synthetic noise only): AUROC of the score, precision
        and recall of the flags, and precision at k = the true number of wrong labels."""
        if self.corrupted is None or not self.corrupted.any() or self.corrupted.all():
            return None
        precision, recall = precision_recall(self.flagged, self.corrupted)
        k = int(self.corrupted.sum())
        return {
            "auroc": float(auroc(-self.score, self.corrupted)),
            "precision": precision,
            "recall": recall,
            "precision_at_k": precision_at_k(self.ranked(), self.corrupted, k),
            "true_noise_rate": float(self.corrupted.mean()),
        }

    def class_name(self, label: int) -> str:
        if label < 0:
            return "?"
        return self.classes[label] if self.classes else str(label)

    # -- files ------------------------------------------------------------------------
    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per training sample, most suspicious first: ``index`` (training-split
        index), the row's ``id`` for tables, ``given_label``, ``likely_label``, ``score``,
        ``flagged``, the class names, the image ``path`` for file datasets, and
        ``true_label``/``corrupted`` where the noise was synthetic. ``data.exclude=`` /
        ``data.relabel=`` read this file."""
        columns = [INDEX_COLUMN, *([ID_COLUMN] if self.ids is not None else [])]
        columns += [GIVEN_COLUMN, LIKELY_COLUMN, "score", FLAG_COLUMN]
        columns += ["given_class", "likely_class"]
        if self.paths is not None:
            columns.append("path")
        truth = self.corrupted is not None and self.true is not None
        if truth:
            columns += ["true_label", "corrupted"]
        with atomic_write(path) as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            for i in self.ranked().tolist():
                likely = int(self.likely[i])
                row: list[Any] = [int(self.index[i])]
                if self.ids is not None:
                    row.append(self.ids[i])
                row += [
                    int(self.given[i]),
                    likely if likely >= 0 else "",
                    f"{self.score[i]:.6g}",
                    int(self.flagged[i]),
                    self.class_name(int(self.given[i])),
                    self.class_name(likely) if likely >= 0 else "",
                ]
                if self.paths is not None:
                    row.append(self.paths[i])
                if truth:
                    row += [int(self.true[i]), int(self.corrupted[i])]
                writer.writerow(row)

    def summary(self) -> dict[str, Any]:
        """The report's numbers, as ``label_issues.json`` stores them."""
        rates = self.class_noise_rates()
        out: dict[str, Any] = {
            "samples": len(self.given),
            "flagged": int(self.flagged.sum()),
            "estimated_noise_rate": round(self.noise_rate, 6),
            "signal": self.scores.signal,
            "evaluation_passes": self.scores.passes,
            "threshold": self.threshold,
            "warnings": list(self.warnings),
            "class_noise_rates": {
                self.class_name(c): None if np.isnan(r) else round(float(r), 6)
                for c, r in enumerate(rates)
            },
            "given_to_likely": [
                {"given": self.class_name(g), "likely": self.class_name(k), "count": n}
                for g, k, n in self.confusion()
            ],
        }
        evaluation = self.evaluation()
        if evaluation is not None:
            out["against_synthetic_truth"] = {k: round(v, 6) for k, v in evaluation.items()}
        if self.source is not None:
            out[SOURCE_KEY] = dict(self.source)
        return out

    def write_summary(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.summary())

    def headline(self, top_pairs: int = 5) -> str:
        """A few lines for the terminal."""
        n, flagged = len(self.given), int(self.flagged.sum())
        source = (
            f"agreement over {self.scores.passes} evaluation "
            f"pass{'' if self.scores.passes == 1 else 'es'}"
            if self.scores.signal == "agreement"
            else f"signal {self.scores.signal}"
        )
        rule = (
            "a two-component split of the scores puts them low"
            if self.threshold == "mixture"
            else f"score < {float(self.threshold):g}"
        )
        lines = [
            f"{flagged:,} of {n:,} training labels flagged as likely wrong "
            f"(estimated noise rate {100 * self.noise_rate:.1f} %; score from {source}; "
            f"flagged where {rule})"
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        rates = self.class_noise_rates()
        worst = [c for c in np.argsort(-np.nan_to_num(rates, nan=-1.0)) if not np.isnan(rates[c])]
        shown = ", ".join(f"{self.class_name(int(c))} {100 * rates[c]:.0f} %" for c in worst[:5])
        lines.append(f"  noisiest given classes: {shown}")
        pairs = self.confusion()[:top_pairs]
        if pairs:
            text = "; ".join(
                f"{self.class_name(g)} -> {self.class_name(k)}: {c:,}" for g, k, c in pairs
            )
            lines.append(f"  given -> likely: {text}")
        evaluation = self.evaluation()
        if evaluation is not None:
            lines.append(
                "  against the synthetic noise's truth (not used for the flags): "
                f"AUROC {evaluation['auroc']:.3f}, precision {evaluation['precision']:.3f}, "
                f"recall {evaluation['recall']:.3f} (true noise rate "
                f"{100 * evaluation['true_noise_rate']:.1f} %)"
            )
        return "\n".join(lines)


def find_label_issues(
    source: str | os.PathLike[str] | SampleSignals,
    *,
    signal: str = "auto",
    threshold: float | str = AUTO_THRESHOLD,
    classes: list[str] | None = None,
) -> LabelIssues:
    """Score, flag and summarise the training labels of a run.

    Args:
        source: a run directory (or its ``signals.npz``), or a
            :class:`~mwnet.run.signals.SampleSignals` your own loop recorded (its samples
            are then indexed 0..n-1).
        signal: which recorded signal scores the samples: ``auto`` (the share of
            evaluation passes agreeing with the given label when the run made any, else
            exp(-mean loss)), ``agreement``, ``confidence``, ``margin``, ``loss`` or
            ``weight``.
        threshold: flag samples whose score is below this (0.5: the model disagreed with
            the label in most passes), ``"mixture"`` (the low component of a two-component
            Gaussian mixture on the scores), or ``"auto"``: 0.5 for every signal but the
            weight, whose scale is the weighting net's, and the mixture for the weight.
        classes: class names for the report (a run directory knows its own).

    Raises:
        FileNotFoundError: no run directory or no signals file there.
        ValueError: a damaged signals file, a signal the run did not record, or records
            in a run directory that are another run's or of another epoch than its
            checkpoint (:mod:`mwnet.label_issues.provenance`).
    """
    extra: dict[str, np.ndarray] = {}
    paths = None
    notes: list[str] = []
    origin: dict[str, Any] | None = None
    if isinstance(source, SampleSignals):
        signals = source
    else:
        path = Path(source)
        run_dir = None
        if path.is_dir():
            if not (path / SIGNALS_FILE).is_file() and not (path / "config.yaml").is_file():
                raise FileNotFoundError(f"{path} is not a run directory (no config.yaml in it)")
            path = path / SIGNALS_FILE
        elif not path.exists():
            raise FileNotFoundError(f"no run directory or signals file at {path}")
        if (path.parent / "config.yaml").is_file():  # a run's record: check it is this run's
            run_dir = path.parent
        # parse exactly the bytes fingerprinted: a running run may replace the file meanwhile
        data = path.read_bytes() if path.is_file() else None
        signals, extra = SampleSignals.load(path, data)
        if run_dir is not None:
            notes += check_signals_of_run(run_dir, path, extra)
            paths = run_paths(run_dir, extra, len(signals))
        origin = {
            "signals_file": path.name,
            "signals_crc": record_fingerprint(data or b""),
            "epoch": int(extra["run_epoch"]) if "run_epoch" in extra else None,
            "run_dir": str((run_dir or path.parent).resolve()),
        }
    n = len(signals)
    scores = quality_scores(signals, signal)
    threshold = resolve_threshold(scores.signal, threshold)
    flagged = flag_issues(scores.values, threshold)
    few = few_passes_warning(scores)
    if few is not None:
        notes.append(few)
    given = signals.labels.numpy()
    likely = np.where(flagged, signals.likely.numpy(), given)
    if "classes" in extra and classes is None:
        classes = [str(c) for c in extra["classes"].tolist()]
    corrupted = extra.get("corrupted")
    return LabelIssues(
        index=np.asarray(extra.get("index", np.arange(n)), dtype=np.int64),
        given=given,
        likely=likely.astype(np.int64),
        scores=scores,
        flagged=flagged,
        threshold=threshold,
        num_classes=signals.num_classes,
        classes=classes,
        paths=paths,
        ids=None if "ids" not in extra else [str(v) for v in extra["ids"].tolist()],
        corrupted=None if corrupted is None else corrupted.astype(bool),
        true=extra.get("true_label"),
        warnings=tuple(notes),
        source=origin,
    )


def issues_file(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / ISSUES_FILE
