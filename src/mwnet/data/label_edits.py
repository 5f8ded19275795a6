"""Closing the loop of a label-issue report: train again without some samples, or with
other labels for them (``data.exclude=FILE``, ``data.relabel=FILE``).

A file names samples by their index in the dataset's training split (the ``index`` column
of ``label_issues.csv``), which does not depend on the meta split, long tail or subset of
a run; or, for a table (``data.dataset=table``), by the rows' ids (an ``id`` column),
which do not depend on the test split either, and may come from any tool. A report's
file also carries each sample's ``given_label``: if it differs from the label this run
gives the sample, the file was made on another dataset, noise or seed, and applying it
would drop or relabel the wrong samples, so that is an error, not a warning.

A report also goes stale: the run it was made from may be resumed and train on, and its
flags then describe an older model. ``label_issues.json`` records the fingerprint of the
``signals.npz`` the report was made from (:data:`SOURCE_KEY`); a report whose run's
signals have changed since is refused (:func:`stale_report`), naming the command that
makes it again.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mwnet.data.errors import DataError

ISSUES_FILE = "label_issues.csv"
SUMMARY_FILE = "label_issues.json"
SOURCE_KEY = "source"
"""The key of ``label_issues.json`` naming the record the report was made from:
``signals_file``, ``signals_crc`` (:func:`record_fingerprint`), the run's ``epoch`` then
and its ``run_dir``."""
INDEX_COLUMN = "index"
ID_COLUMN = "id"
"""A table's row ids, in ``label_issues.csv`` and in edit files of a table's rows."""
GIVEN_COLUMN = "given_label"
LIKELY_COLUMN = "likely_label"
FLAG_COLUMN = "flagged"


@dataclass(frozen=True)
class LabelEdits:
    """Samples named by a file: their training-split indices, and new labels if given."""

    path: Path
    index: torch.Tensor
    labels: torch.Tensor | None
    """For relabelling: the new label of each listed sample."""
    given: torch.Tensor | None
    """The label each sample had where the file was made (to check it fits this run)."""
    ids: tuple[str, ...] | None = None
    """The samples' ids (a file with an ``id`` column), which :func:`edits_by_id` turns
    into training-split indices; ``index`` is then empty until it has."""
    label_names: tuple[str, ...] | None = None
    """For relabelling by id: the new labels as written (class names or numbers)."""


def _resolve(path: str | os.PathLike[str], key: str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / ISSUES_FILE
    if not path.is_file():
        raise DataError(
            f"{key}={path}: no such file; give a label_issues.csv written by `mwnet issues "
            "RUN_DIR` (or that run directory), or a file of training-set indices"
        )
    return path


def read_label_edits(path: str | os.PathLike[str], relabel: bool) -> LabelEdits:
    """Read an exclusion or relabelling file.

    Accepted forms: a ``label_issues.csv`` (or the run directory holding one; only rows
    with ``flagged`` = 1 count when that column exists, and the new labels are the
    ``likely_label`` column), any CSV with an ``index`` or ``id`` column (and
    ``likely_label`` or ``label`` for relabelling: with ids, a class name or number), or
    lines of ``index`` (exclusion) / ``index label``. A CSV with an ``id`` column names its
    samples by id (:func:`edits_by_id`).
    """
    key = "data.relabel" if relabel else "data.exclude"
    path = _resolve(path, key)
    stale = stale_report(path)
    if stale is not None:
        raise DataError(f"{key}={stale}")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError(f"{key}={path}: the file lists no samples")
    first = lines[0].replace(",", " ").split()
    if first and not first[0].lstrip("-").isdigit():
        if ID_COLUMN in (csv.DictReader(lines[:1]).fieldnames or []):
            return _id_rows(path, lines, key, relabel)
        rows = _csv_rows(path, lines, key, relabel)
    else:
        rows = _plain_rows(path, lines, key, relabel)
    index, labels, given = rows
    return LabelEdits(
        path=path,
        index=torch.tensor(index, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64) if relabel else None,
        given=torch.tensor(given, dtype=torch.int64) if given is not None else None,
    )


def _csv_rows(
    path: Path, lines: list[str], key: str, relabel: bool
) -> tuple[list[int], list[int], list[int] | None]:
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    label_column = next((c for c in (LIKELY_COLUMN, "label") if c in columns), None)
    if INDEX_COLUMN not in columns or (relabel and label_column is None):
        need = "'index' and 'likely_label' (or 'label')" if relabel else "'index'"
        raise DataError(f"{key}={path}: a CSV here needs the column(s) {need}; got {columns}")
    index, labels, given = [], [], []
    for number, row in enumerate(reader, start=2):
        try:
            if FLAG_COLUMN in columns and int(row[FLAG_COLUMN]) == 0:
                continue
            index.append(int(row[INDEX_COLUMN]))
            if relabel:
                labels.append(int(row[label_column]))
            if GIVEN_COLUMN in columns:
                given.append(int(row[GIVEN_COLUMN]))
        except (TypeError, ValueError):
            raise DataError(f"{path}:{number}: not a row of integers: {row}") from None
    return index, labels, (given if GIVEN_COLUMN in columns else None)


def _id_rows(path: Path, lines: list[str], key: str, relabel: bool) -> LabelEdits:
    """A CSV naming samples by ``id``: their ids, and (relabelling) the new labels as
    written, resolved against the run's table by :func:`edits_by_id`."""
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    label_column = next((c for c in (LIKELY_COLUMN, "label") if c in columns), None)
    if relabel and label_column is None:
        raise DataError(
            f"{key}={path}: a CSV of ids needs a 'likely_label' or 'label' column to relabel "
            f"by; got {columns}"
        )
    ids, names, given = [], [], []
    for number, row in enumerate(reader, start=2):
        try:
            if FLAG_COLUMN in columns and int(row[FLAG_COLUMN]) == 0:
                continue
            if GIVEN_COLUMN in columns:
                given.append(int(row[GIVEN_COLUMN]))
        except (TypeError, ValueError):
            raise DataError(
                f"{path}:{number}: {FLAG_COLUMN} or {GIVEN_COLUMN} is not an integer"
            ) from None
        name = (row[ID_COLUMN] or "").strip()
        if not name:
            raise DataError(f"{path}:{number}: empty id")
        ids.append(name)
        if relabel:
            names.append((row[label_column] or "").strip())
    return LabelEdits(
        path=path,
        index=torch.zeros(0, dtype=torch.int64),
        labels=None,
        given=torch.tensor(given, dtype=torch.int64) if GIVEN_COLUMN in columns else None,
        ids=tuple(ids),
        label_names=tuple(names) if relabel else None,
    )


def edits_by_id(
    edits: LabelEdits, ids: Sequence[str] | None, classes: Sequence[str], key: str
) -> LabelEdits:
    """``edits`` with the samples its ``id`` column names as training-split indices
    (``ids``: the id of each sample of the training split, None for data without ids),
    and its new labels (class names or numbers) as class numbers; ``edits`` itself when
    it names samples by index.

    Raises:
        DataError: ids for data without ids, an id that is no training row (a test or
            trusted row, or another table's), a label that is no class.
    """
    if edits.ids is None:
        return edits
    if ids is None:
        raise DataError(
            f"{key}={edits.path} names samples by id (an 'id' column), but this data has no "
            "ids (only tables do: data.dataset=table); name them by their 'index'"
        )
    position = {name: i for i, name in enumerate(ids)}
    unknown = [name for name in edits.ids if name not in position]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3])
        raise DataError(
            f"{key}={edits.path}: {len(unknown)} listed id(s) ({shown}) are not training rows "
            "of this table (test or trusted rows, or another table's); list training rows only"
        )
    labels = None
    if edits.label_names is not None:
        numbers = []
        for name, label in zip(edits.ids, edits.label_names, strict=True):
            if label in classes:
                numbers.append(list(classes).index(label))
            elif label.isdigit() and int(label) < len(classes):
                numbers.append(int(label))
            else:
                raise DataError(
                    f"{key}={edits.path}: id {name!r}: new label {label!r} is neither a class "
                    f"({', '.join(list(classes)[:10])}) nor a class number below {len(classes)}"
                )
        labels = torch.tensor(numbers, dtype=torch.int64)
    index = torch.tensor([position[name] for name in edits.ids], dtype=torch.int64)
    return LabelEdits(edits.path, index, labels, edits.given)


def _plain_rows(
    path: Path, lines: list[str], key: str, relabel: bool
) -> tuple[list[int], list[int], None]:
    index, labels = [], []
    want = 2 if relabel else 1
    form = "'index label'" if relabel else "one index"
    for number, line in enumerate(lines, start=1):
        fields = line.replace(",", " ").split()
        if len(fields) != want or not all(f.lstrip("-").isdigit() for f in fields):
            raise DataError(f"{path}:{number}: expected {form} per line, got {line!r}")
        index.append(int(fields[0]))
        if relabel:
            labels.append(int(fields[1]))
    return index, labels, None


def apply_label_edits(
    source_index: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    exclude: LabelEdits | None = None,
    relabel: LabelEdits | None = None,
    classes: Sequence[str] | None = None,
    spare_classes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which training samples to keep, and their labels after relabelling.

    Args:
        source_index: every training sample's index in the dataset's training split.
        labels: their labels as this run gives them (after any synthetic corruption).
        exclude / relabel: files read by :func:`read_label_edits`.
        classes: the class names, to name a class in an error.
        spare_classes: a class whose every sample ``exclude`` lists keeps its samples,
            with a warning, instead of being refused (a pipeline that drops a run's flags
            unattended: there, flags on a whole class say more about the run than about
            the labels).

    Returns:
        ``(keep, new_labels)``: positions into ``source_index`` to keep, in order, and the
        labels of every sample (relabelled ones changed), before the selection.

    Raises:
        DataError: a listed index is not in this training set, a file's given labels do
            not match this run's, a new label is out of range, or the edits leave a class
            that had training samples with none (the model would keep an output it never
            sees trained: almost always a file made for other data, or a relabelling gone
            wrong, so it is refused like a meta split that takes a whole class).
    """
    position = {int(s): p for p, s in enumerate(source_index.tolist())}
    new_labels = labels.clone()
    dropped = torch.zeros(len(labels), dtype=torch.bool)
    for key, edits in (("data.relabel", relabel), ("data.exclude", exclude)):
        if edits is None:
            continue
        rows = _positions(edits, position, key, len(source_index))
        if edits.given is not None:
            _check_given(edits, labels[rows], key)
        if edits.labels is not None:
            bad = (edits.labels < 0) | (edits.labels >= num_classes)
            if bad.any():
                raise DataError(
                    f"{key}={edits.path}: label {int(edits.labels[bad][0])} is out of range "
                    f"for {num_classes} classes"
                )
            new_labels[rows] = edits.labels
        else:
            dropped[rows] = True
    if spare_classes:
        emptied = _emptied(labels, new_labels[~dropped], num_classes)
        if emptied:
            dropped &= ~torch.isin(new_labels, torch.tensor(emptied))
            names = ", ".join(_class_name(c, classes) for c in emptied)
            warnings.warn(
                f"data.exclude={exclude.path if exclude else ''} lists every training sample "
                f"of {names}; kept them (data.exclude_spares_classes=true)",
                stacklevel=2,
            )
    if dropped.all():
        raise DataError("data.exclude drops every training sample; nothing would be left to train")
    _check_no_class_emptied(labels, new_labels[~dropped], num_classes, exclude, relabel, classes)
    return torch.nonzero(~dropped).flatten(), new_labels


def _check_no_class_emptied(
    before: torch.Tensor,
    after: torch.Tensor,
    num_classes: int,
    exclude: LabelEdits | None,
    relabel: LabelEdits | None,
    classes: Sequence[str] | None,
) -> None:
    emptied = _emptied(before, after, num_classes)
    if not emptied:
        return
    name = _class_name(emptied[0], classes)
    more = f" (and {len(emptied) - 1} more class(es))" if len(emptied) > 1 else ""
    pairs = (("data.exclude", exclude), ("data.relabel", relabel))
    used = " with ".join(f"{key}={e.path}" for key, e in pairs if e is not None)
    spare = " (or set data.exclude_spares_classes=true)" if exclude is not None else ""
    raise DataError(
        f"{used} leaves {name}{more} with no training samples; a class must keep some to be "
        f"learned: check that the file was made for this data, or keep some of the class{spare}"
    )


def _emptied(before: torch.Tensor, after: torch.Tensor, num_classes: int) -> list[int]:
    """The classes ``before`` has samples of and ``after`` has none of."""
    had = torch.bincount(before, minlength=num_classes) > 0
    has = torch.bincount(after, minlength=num_classes) > 0
    return torch.nonzero(had & ~has).flatten().tolist()


def _class_name(c: int, classes: Sequence[str] | None) -> str:
    return f"class {classes[c]!r}" if classes is not None else f"class {c}"


def _positions(edits: LabelEdits, position: dict[int, int], key: str, n: int) -> torch.Tensor:
    unknown = [i for i in edits.index.tolist() if i not in position]
    if unknown:
        shown = ", ".join(str(i) for i in unknown[:5])
        raise DataError(
            f"{key}={edits.path}: {len(unknown)} listed index(es) are not in this run's "
            f"training set of {n} samples (e.g. {shown}); indices must come from a run on "
            "the same data settings (they may be out of range, in the clean meta split, or "
            "left out by the long tail or data.subset)"
        )
    return torch.tensor([position[i] for i in edits.index.tolist()], dtype=torch.int64)


def _check_given(edits: LabelEdits, labels: torch.Tensor, key: str) -> None:
    assert edits.given is not None
    differ = torch.nonzero(edits.given != labels).flatten()
    if len(differ):
        k = int(differ[0])
        raise DataError(
            f"{key}={edits.path} was made on other labels: at {len(differ)} of "
            f"{len(labels)} listed samples its given_label differs from this run's (e.g. index "
            f"{int(edits.index[k])}: {int(edits.given[k])} there, {int(labels[k])} here); make "
            "it from a run of the same dataset, noise and seed"
        )


def record_fingerprint(data: bytes) -> str:
    """The fingerprint of a record file's bytes (CRC-32, 8 hex digits): any rewrite of the
    record, such as the next epoch's ``signals.npz``, changes it."""
    return f"{zlib.crc32(data):08x}"


def stale_report(path: str | os.PathLike[str]) -> str | None:
    """Why the report ``path`` (a ``label_issues.csv``) no longer describes its run, or
    None when it does or cannot be told (a file not written by ``mwnet issues``, a report
    of an older mwnet, or one copied away from its run).

    The run is the directory holding the report when it holds the signals file the report
    was made from, else the run directory the report recorded.
    """
    path = Path(path)
    summary = path.with_name(SUMMARY_FILE)
    if path.name != ISSUES_FILE or not summary.is_file():
        return None
    try:
        source = json.loads(summary.read_text(encoding="utf-8")).get(SOURCE_KEY)
        name, crc = str(source["signals_file"]), str(source["signals_crc"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    run_dir = path.parent
    if not (run_dir / name).is_file() and source.get("run_dir"):
        run_dir = Path(source["run_dir"])
    signals = run_dir / name
    try:
        current = record_fingerprint(signals.read_bytes())
    except OSError:
        return None
    if current == crc:
        return None
    then, now = source.get("epoch"), _recorded_epoch(signals)
    since = f"epoch {then}" if then is not None else "an earlier state"
    later = f" (now at epoch {now})" if now is not None and now != then else ""
    return (
        f"{path} is stale: it describes {since} of the run in {run_dir}, whose {name} has "
        f"changed since{later}; make it again with `mwnet issues {run_dir}`"
    )


def _recorded_epoch(signals: Path) -> int | None:
    """The run's epoch a signals file records, or None (an older or damaged file)."""
    import numpy as np

    try:
        with np.load(signals, allow_pickle=False) as npz:
            return int(npz["run_epoch"]) if "run_epoch" in npz.files else None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
