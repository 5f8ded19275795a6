"""The training, test and trusted sets of ``data.dataset=table``, from ``data.table.*``.

A table's rows become the same in-memory record as images
(:class:`~mwnet.data.dataset.ImageDataset`, each row ``float32`` ``(D, 1, 1)``), so the
rest of :func:`~mwnet.data.prepare` (noise, subset, validation split, label edits) and
the training loop, its sharding included, run unchanged on them.

Classes are the distinct labels of the training file (its trusted rows included): sorted
as numbers when every label is an integer (``"2" < "10"``), else sorted as text. A test
or trusted row of another class is an error naming it: the model has no output for it.
The test set is ``data.table.test_path``, or ``data.table.test_fraction`` of the
untrusted rows drawn under the seed (from its own stream, so it is the same rows for
every method and every other data option).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.errors import ConfigError, DatasetError
from mwnet.data.table import Table, TableColumns, read_table

TEST_STREAM = 0x7465737A
"""Mixed into the seed for the test draw, independent of the meta and validation draws."""


def table_columns(t: Any) -> TableColumns:
    """The ``data.table`` config's column options."""
    features = None if t.feature_columns is None else tuple(str(c) for c in t.feature_columns)
    return TableColumns(
        label=str(t.label_column),
        features=features,
        embedding=t.embedding_column,
        id=t.id_column,
        trusted=t.trusted_column,
    )


def _path(d: Any, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() or not d.root else Path(d.root) / path


def table_classes(labels: tuple[str, ...]) -> list[str]:
    """The class names of ``labels``: sorted as integers when every one is an integer
    written plainly (``"2" < "10"``), else sorted as text."""
    distinct = set(labels)
    if all(_plain_int(y) for y in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _plain_int(text: str) -> bool:
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def _label_index(table: Table, classes: list[str], role: str) -> torch.Tensor:
    index = {c: k for k, c in enumerate(classes)}
    out = []
    for i, y in enumerate(table.labels):
        k = index.get(y)
        if k is None:
            raise DatasetError(
                f"{table.path}: row {i} ({table.ids[i]}) of the {role} has class {y!r}, which no "
                f"training row has (classes: {', '.join(classes[:10])}"
                f"{', ...' if len(classes) > 10 else ''}); add training rows of it or drop the row"
            )
        out.append(k)
    return torch.tensor(out, dtype=torch.int64)


def _dataset(table: Table, rows: np.ndarray, classes: list[str], role: str) -> ImageDataset:
    sub = Table(
        table.features[rows],
        tuple(table.labels[i] for i in rows.tolist()),
        tuple(table.ids[i] for i in rows.tolist()),
        None,
        table.feature_names,
        table.path,
    )
    x = torch.from_numpy(sub.features.astype(np.float32)).reshape(len(rows), -1, 1, 1)
    return ImageDataset(
        x.contiguous(),
        _label_index(sub, classes, role),
        list(classes),
        table.path.stem,
        None,
        sub.ids,
        table.feature_names,
    )


def _same_features(other: Table, train: Table, key: str) -> None:
    if other.feature_names != train.feature_names:
        raise DatasetError(
            f"{other.path} ({key}) has {len(other.feature_names)} features "
            f"({', '.join(other.feature_names[:5])}...), the training table "
            f"{len(train.feature_names)} ({', '.join(train.feature_names[:5])}...); give it "
            "the training table's feature columns"
        )


def load_table_sets(d: Any, seed: int) -> tuple[ImageDataset, ImageDataset, ImageDataset | None]:
    """(train, test, trusted set or None) of ``data.dataset=table`` (``d``: the data config).

    Raises:
        DatasetError: what :func:`~mwnet.data.table.read_table` refuses, a test or trusted
            row of a class no training row has, tables of different features.
        ConfigError: too few rows for the test split.
    """
    t = d.table
    cols = table_columns(t)
    labels_path = _path(d, t.labels_path) if t.labels_path else None
    main = read_table(_path(d, t.path), cols, labels_path)
    flagged = main.trusted if main.trusted is not None else np.zeros(len(main), dtype=bool)
    classes = table_classes(main.labels)
    plain = np.flatnonzero(~flagged)
    if t.test_path:
        test_table = read_table(_path(d, t.test_path), _without_trusted(cols))
        _same_features(test_table, main, "data.table.test_path")
        test = _dataset(test_table, np.arange(len(test_table)), classes, "test table")
        train_rows = plain
    else:
        n_test = round(float(t.test_fraction) * len(plain))
        if n_test < 1 or n_test >= len(plain):
            raise ConfigError(
                f"data.table.test_fraction={t.test_fraction} of the {len(plain)} untrusted rows "
                f"of {main.path} holds out {n_test} rows for the test set, leaving "
                f"{len(plain) - n_test} to train on; give more rows, another test_fraction, or "
                "a test table (data.table.test_path=FILE)"
            )
        rng = np.random.default_rng([int(seed), TEST_STREAM])
        held = np.zeros(len(plain), dtype=bool)
        held[rng.choice(len(plain), size=n_test, replace=False)] = True
        test = _dataset(main, plain[held], classes, "table")
        train_rows = plain[~held]
    train = _dataset(main, train_rows, classes, "table")
    meta_parts = []
    if flagged.any():
        meta_parts.append(_dataset(main, np.flatnonzero(flagged), classes, "trusted rows"))
    if t.trusted_path:
        trusted = read_table(_path(d, t.trusted_path), _without_trusted(cols))
        _same_features(trusted, main, "data.table.trusted_path")
        meta_parts.append(_dataset(trusted, np.arange(len(trusted)), classes, "trusted table"))
    meta = None
    if meta_parts:
        meta = ImageDataset(
            torch.cat([m.images for m in meta_parts]),
            torch.cat([m.labels for m in meta_parts]),
            list(classes),
            "trusted",
            feature_names=main.feature_names,
        )
        _check_trusted_classes(meta, train)
    return train, test, meta


def _without_trusted(cols: TableColumns) -> TableColumns:
    """A test or trusted table needs no trusted flag column (it may still have one)."""
    ignore = () if cols.trusted is None else (cols.trusted,)
    return TableColumns(cols.label, cols.features, cols.embedding, cols.id, None, ignore)


def _check_trusted_classes(meta: ImageDataset, train: ImageDataset) -> None:
    """Every class of the trusted set has training rows: a trusted class the training set
    lacks would hold the weighting net's meta loss to an output nothing trains."""
    in_train = set(train.labels.tolist())
    absent = sorted(set(meta.labels.tolist()) - in_train)
    if absent:
        names = ", ".join(repr(train.classes[c]) for c in absent[:5])
        raise DatasetError(
            f"the trusted rows hold class(es) {names}, which no training row has (every such "
            "row is trusted or held out for the test set); add untrusted training rows of it, "
            "or drop those trusted rows"
        )
