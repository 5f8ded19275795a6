"""Tables of features and labels: CSV, Parquet, NumPy ``.npy`` and ``.npz`` files.

Most labelled data that is not a folder of images is a table: a row per sample holding
precomputed embeddings (from a foundation model) or tabular features, and a label column
filled by annotators. :func:`read_table` reads one file into a :class:`Table` of float64
features, the raw label values, an id per row and an optional trusted flag, checking
everything a training run would otherwise trip over later with a traceback: every error
is one line naming the file, the row (``file:line`` for CSV) and the column, and the fix.

Formats, by extension:

- ``.csv``: a header row, then one row per sample (stdlib :mod:`csv`). A feature cell
  must be a finite number; an embedding cell (``embedding_column``) holds a whole vector,
  as JSON (``[0.1, 0.2]``) or separated by spaces or commas.
- ``.parquet`` / ``.pq``: the same columns, typed; needs pyarrow (``mwnet[parquet]``).
  An embedding column may be a list column.
- ``.npz``: arrays ``X`` (or ``features``), ``y`` (or ``labels``), optionally ``ids`` and
  ``trusted``; the column options do not apply.
- ``.npy``: one 2-D feature array; its labels come from ``labels_path`` (a 1-D ``.npy``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.data.errors import DatasetError

TABLE_EXTENSIONS = (".csv", ".parquet", ".pq", ".npz", ".npy")
"""The file kinds :func:`read_table` reads."""

FEATURE_KEYS = ("X", "features")
LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a CSV or Parquet file hold what (see ``data.table`` in the config).

    Attributes:
        label: the label column (class names or integers).
        features: the feature columns, in order; None: every column but the label, id,
            trusted and embedding columns.
        embedding: one column holding each row's whole vector (before ``features``).
        id: the column naming each row; None: rows are named by their number (0-based).
        trusted: a column of 0/1 (or true/false) flags marking rows known to be labelled
            right.
        ignore: columns never taken as features when ``features`` is None (a test table's
            trusted column, which means nothing there).
    """

    label: str = "label"
    features: tuple[str, ...] | None = None
    embedding: str | None = None
    id: str | None = None
    trusted: str | None = None
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """One table file, read and checked.

    Attributes:
        features: float64 ``(N, D)``, every value finite.
        labels: the label of each row as text (an integer label as its decimal digits).
        ids: each row's name, unique.
        trusted: each row's trusted flag, or None when the file has none.
        feature_names: the name of each of the ``D`` features.
        path: the file.
    """

    features: np.ndarray
    labels: tuple[str, ...]
    ids: tuple[str, ...]
    trusted: np.ndarray | None
    feature_names: tuple[str, ...]
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def read_table(
    path: str | os.PathLike[str],
    columns: TableColumns = TableColumns(),
    labels_path: str | os.PathLike[str] | None = None,
    labels_required: bool = True,
) -> Table:
    """The table at ``path`` (see the module docstring for the formats).

    With ``labels_required=False`` (rows to predict) a table without its label column
    (or a ``.npz`` without labels, a ``.npy`` without ``labels_path``) is read with every
    label ``""``, and so is an empty label cell.

    Raises:
        DatasetError: one line naming the file (row, column) and the fix, for a missing
            file, an unknown extension, no header, a missing label or feature column, a
            row with more or fewer cells than the header, a non-numeric or non-finite
            feature, embedding vectors of different lengths, an empty label, an empty
            table and a duplicate id.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a table file" if path.is_dir() else "does not exist"
        raise DatasetError(f"{path}: {what}; give a table file ({', '.join(TABLE_EXTENSIONS)})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, data = _csv_columns(path)
        return _from_columns(header, data, columns, path, True, labels_required)
    if suffix in (".parquet", ".pq"):
        header, data = _parquet_columns(path)
        return _from_columns(header, data, columns, path, False, labels_required)
    if suffix == ".npz":
        return _from_npz(path, labels_required)
    if suffix == ".npy":
        return _from_npy(path, labels_path, labels_required)
    raise DatasetError(
        f"{path}: cannot read a {suffix or 'extensionless'} file as a table; give a "
        f"{', '.join(TABLE_EXTENSIONS)} file"
    )


# -- CSV and Parquet -------------------------------------------------------------------


def _csv_columns(path: Path) -> tuple[list[str], dict[str, list[Any]]]:
    """The header and the columns of a CSV file, every row checked for its width."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the table as "
            "UTF-8 CSV"
        ) from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read CSV: {exc}") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise DatasetError(f"{path}: empty file; a table needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DatasetError(f"{path}: column {repeated[0]!r} appears twice in the header")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}:{number}: {len(row)} cells for the {len(header)} columns of the header "
                "(a ragged row); give every row one cell per column (quote cells holding commas)"
            )
    data = {h: [row[j] for row in rows[1:]] for j, h in enumerate(header)}
    return header, data


def _parquet_columns(path: Path) -> tuple[list[str], dict[str, list[Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            f"{path}: reading Parquet needs pyarrow: pip install 'mwnet[parquet]' (or save the "
            "table as CSV)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's own error classes: a damaged or foreign file
        raise DatasetError(f"{path}: cannot read Parquet: {exc}") from None
    data = table.to_pydict()
    return list(data), data


def _row_name(path: Path, i: int, csv_lines: bool) -> str:
    """Row ``i`` (0-based data row) as messages name it: the line for CSV."""
    return f"{path}:{i + 2}" if csv_lines else f"{path}: row {i}"


def _from_columns(
    header: list[str],
    data: dict[str, list[Any]],
    cols: TableColumns,
    path: Path,
    csv_lines: bool,
    labels_required: bool = True,
) -> Table:
    n = len(next(iter(data.values()), []))
    labelled = labels_required or cols.label in data
    named = [c for c in (cols.embedding, cols.id, cols.trusted) if c]
    named = ([cols.label] if labelled else []) + named
    named += list(cols.features or ())
    for column in named:
        if column not in data:
            key = _option_of(column, cols)
            raise DatasetError(
                f"{path}: no column {column!r} ({key}); its columns are {', '.join(header)}"
            )
    if n == 0:
        raise DatasetError(f"{path}: the table has a header but no rows; add the labelled rows")
    special = {cols.label, cols.embedding, cols.id, cols.trusted, *cols.ignore} - {None}
    names = (
        list(cols.features)
        if cols.features is not None
        else [h for h in header if h not in special]
    )
    blocks, feature_names = [], []
    if cols.embedding:
        vectors = _embedding(data[cols.embedding], cols.embedding, path, csv_lines)
        blocks.append(vectors)
        feature_names += [f"{cols.embedding}[{k}]" for k in range(vectors.shape[1])]
    fix = (
        "fix the cell, or leave the column out of data.table.feature_columns"
        if cols.features is not None
        else "fix the cell; if the column is no feature, list the features in "
        "data.table.feature_columns=[...] (or, if it names the rows, set data.table.id_column)"
    )
    for name in names:
        blocks.append(_numeric(data[name], name, path, csv_lines, fix)[:, None])
        feature_names.append(name)
    if not blocks:
        raise DatasetError(
            f"{path}: no feature column (the columns are {', '.join(header)}); name them with "
            "data.table.feature_columns=[...] or data.table.embedding_column=COLUMN"
        )
    features = np.concatenate(blocks, axis=1)
    if labels_required:
        labels = _labels(data[cols.label], cols.label, path, csv_lines)
    else:  # rows to predict: an empty label cell is an unlabelled row
        labels = tuple(_text(v) for v in data[cols.label]) if labelled else ("",) * n
    if cols.id:
        ids = tuple(_text(v) for v in data[cols.id])
        _check_ids(ids, path, csv_lines)
    else:
        ids = tuple(str(i) for i in range(n))
    trusted = None
    if cols.trusted:
        trusted = _flags(data[cols.trusted], cols.trusted, path, csv_lines)
    return Table(features, labels, ids, trusted, tuple(feature_names), path)


def _option_of(column: str, cols: TableColumns) -> str:
    for key, value in (
        ("label_column", cols.label),
        ("embedding_column", cols.embedding),
        ("id_column", cols.id),
        ("trusted_column", cols.trusted),
    ):
        if column == value:
            return f"data.table.{key}"
    return "data.table.feature_columns"


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (a text cell, an empty cell)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _numeric(values: Sequence[Any], name: str, path: Path, csv_lines: bool, fix: str) -> np.ndarray:
    if not any(isinstance(v, bool) or v is None for v in values):
        try:  # numpy's parser first; a cell it refuses is found and named below
            fast = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            fast = None
        if fast is not None and fast.ndim == 1 and np.isfinite(fast).all():
            return fast
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        x = _number(value)
        if x is None and not _text(value):
            raise DatasetError(
                f"{_row_name(path, i, csv_lines)}: column {name!r} is empty (a missing value); "
                "fill it in or drop the row"
            )
        if x is None:
            raise DatasetError(
                f"{_row_name(path, i, csv_lines)}: column {name!r} holds {_text(value)!r}, not a "
                f"number; {fix}"
            )
        if not math.isfinite(x):
            raise DatasetError(
                f"{_row_name(path, i, csv_lines)}: column {name!r} is {x} (not finite); fill in "
                "the missing value or drop the row"
            )
        out[i] = x
    return out


def _vector(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    text = _text(value)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return text.replace(",", " ").split()


def _embedding(values: Sequence[Any], name: str, path: Path, csv_lines: bool) -> np.ndarray:
    rows: list[list[float]] = []
    for i, value in enumerate(values):
        where = _row_name(path, i, csv_lines)
        vector = _vector(value)
        if not vector:
            raise DatasetError(
                f"{where}: column {name!r} holds no vector; give each row its vector as JSON "
                "([0.1, 0.2, ...]) or numbers separated by spaces"
            )
        numbers = [_number(x) for x in vector]
        bad = next((k for k, x in enumerate(numbers) if x is None or not math.isfinite(x)), None)
        if bad is not None:
            raise DatasetError(
                f"{where}: column {name!r}, entry {bad}, is {_text(vector[bad])!r}, not a finite "
                "number; fix the vector or drop the row"
            )
        if rows and len(numbers) != len(rows[0]):
            raise DatasetError(
                f"{where}: column {name!r} holds a vector of {len(numbers)} numbers, but the "
                f"first row's has {len(rows[0])} (ragged embeddings); give every row a vector "
                "of one length"
            )
        rows.append(numbers)  # type: ignore[arg-type]
    return np.asarray(rows, dtype=np.float64)


def _labels(values: Sequence[Any], name: str, path: Path, csv_lines: bool) -> tuple[str, ...]:
    labels = tuple(_text(v) for v in values)
    empty = next((i for i, y in enumerate(labels) if not y), None)
    if empty is not None:
        raise DatasetError(
            f"{_row_name(path, empty, csv_lines)}: no label in column {name!r}; label the row "
            "or drop it"
        )
    return labels


TRUE_FLAGS = ("1", "true", "yes", "y", "t")
FALSE_FLAGS = ("0", "false", "no", "n", "f", "")


def _flags(values: Sequence[Any], name: str, path: Path, csv_lines: bool) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        text = _text(value).lower()
        if text in TRUE_FLAGS:
            out[i] = True
        elif text not in FALSE_FLAGS:
            raise DatasetError(
                f"{_row_name(path, i, csv_lines)}: column {name!r} holds {_text(value)!r}; a "
                "trusted flag is 1/0 (or true/false)"
            )
    return out


def _check_ids(ids: Sequence[str], path: Path, csv_lines: bool) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(ids):
        if not name:
            raise DatasetError(f"{_row_name(path, i, csv_lines)}: empty id; give every row an id")
        if name in seen:
            raise DatasetError(
                f"{_row_name(path, i, csv_lines)}: id {name!r} repeats the id of "
                f"{_row_name(path, seen[name], csv_lines)}; ids must be unique"
            )
        seen[name] = i


# -- NumPy -----------------------------------------------------------------------------


def _load_numpy(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read NumPy file: {exc}") from None


def _check_matrix(x: np.ndarray, path: Path, what: str) -> np.ndarray:
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)):
        raise DatasetError(
            f"{path}: {what} must be a 2-D array of numbers (rows x features), got "
            f"{x.dtype} of shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise DatasetError(f"{path}: {what} has no rows; add the labelled rows")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise DatasetError(
            f"{path}: row {i}, feature {j} of {what} is {x[i, j]} (not finite); fill in the "
            "missing value or drop the row"
        )
    return x.astype(np.float64)


def _label_texts(y: np.ndarray, n: int, path: Path, what: str) -> tuple[str, ...]:
    if y.ndim != 1 or y.shape[0] != n:
        raise DatasetError(
            f"{path}: {what} must be 1-D with one label per row ({n}), got shape {y.shape}"
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DatasetError(f"{path}: {what} holds non-integer numbers; labels are classes")
        y = y.astype(np.int64)
    return tuple(str(v) for v in y.tolist())


def _from_npz(path: Path, labels_required: bool = True) -> Table:
    with _load_numpy(path) as arrays:
        keys = set(arrays.files)
        xkey = next((k for k in FEATURE_KEYS if k in keys), None)
        ykey = next((k for k in LABEL_KEYS if k in keys), None)
        if xkey is None or (ykey is None and labels_required):
            missing = "features (X or features)" if xkey is None else "labels (y or labels)"
            raise DatasetError(
                f"{path}: no array of {missing}; its arrays are {', '.join(sorted(keys))}"
            )
        x = _check_matrix(arrays[xkey], path, f"array {xkey!r}")
        labels = ("",) * x.shape[0]
        if ykey is not None:
            labels = _label_texts(arrays[ykey], x.shape[0], path, f"array {ykey!r}")
        ids = tuple(str(i) for i in range(x.shape[0]))
        if "ids" in keys:
            ids = _label_texts(arrays["ids"], x.shape[0], path, "array 'ids'")
            _check_ids(ids, path, csv_lines=False)
        trusted = None
        if "trusted" in keys:
            t = arrays["trusted"]
            if t.shape != (x.shape[0],):
                raise DatasetError(f"{path}: array 'trusted' must have one flag per row")
            trusted = t.astype(bool)
    names = tuple(f"{xkey}[{k}]" for k in range(x.shape[1]))
    return Table(x, labels, ids, trusted, names, path)


def _from_npy(
    path: Path, labels_path: str | os.PathLike[str] | None, labels_required: bool = True
) -> Table:
    if labels_path is None and labels_required:
        raise DatasetError(
            f"{path}: a .npy file holds the features only; give its labels with "
            "data.table.labels_path=LABELS.npy (or save both in one .npz as X and y)"
        )
    x = _check_matrix(_load_numpy(path), path, "the feature array")
    names = tuple(f"x[{k}]" for k in range(x.shape[1]))
    ids = tuple(str(i) for i in range(x.shape[0]))
    if labels_path is None:
        return Table(x, ("",) * x.shape[0], ids, None, names, path)
    lpath = Path(labels_path)
    if not lpath.is_file():
        raise DatasetError(f"{lpath}: labels file does not exist (data.table.labels_path)")
    labels = _label_texts(_load_numpy(lpath), x.shape[0], lpath, "the label array")
    return Table(x, labels, ids, None, names, path)
