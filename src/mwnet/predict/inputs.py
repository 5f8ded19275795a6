"""What ``mwnet predict`` is asked to predict: an image folder, a list file, one image,
or a split of a named dataset, with the labels the input carries.

- A folder: every image file under it, at any depth, sorted (found as
  ``data.dataset=folder`` finds them: by extension, hidden files and folders skipped,
  symlinked folders followed once). An image is labelled when a folder between the input
  folder and the file is named after a class (the nearest one): a class-per-folder tree
  such as a run's own ``test/`` folder.
- A list file: ``relative/path [label]`` lines as ``data.dataset=list`` reads them, the
  label (optional here) being the class number, the paths relative to the image root
  (default: the list file's folder).
- One image file.
- ``NAME:SPLIT``, e.g. ``fashion-mnist:test``: the split of a named dataset, read by
  mwnet's own loader from ``--data-root`` or the usual places (never downloaded), with its
  labels.
- For a model trained on a table (``data.dataset=table``): a table file (CSV, Parquet,
  ``.npz``, ``.npy``) read with the columns the model was trained on
  (:func:`open_table_inputs`); rows are named by their id, and labelled when the table
  has the label column.

A class named with a ``/`` (Fashion-MNIST's ``T-shirt/top``) cannot name a folder: a
folder or a dataset class matches it with the ``/`` written ``_`` too, as
``examples/make_image_folder.py`` writes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mwnet.data.errors import DatasetError
from mwnet.data.image_folder import IMAGE_EXTENSIONS, image_files, list_entries


@dataclass(frozen=True)
class Item:
    """One image to predict."""

    name: str
    """What the output calls it: its path, or its index in a dataset split."""
    file: Path | None
    """The image file; None for an image of a dataset split."""
    label: str | None
    """The class the input gives it (a name), or None."""
    index: int = 0
    """Its position in a dataset split."""


@dataclass
class Inputs:
    """The images of one input, in the order they are predicted."""

    kind: str
    """``folder``, ``list``, ``image``, ``split`` or ``table``."""
    items: list[Item]
    column: str = "path"
    """The output column naming each image: ``path``, ``index`` for a dataset split, ``id``
    for a table's rows."""
    images: torch.Tensor | None = None
    """A dataset split's images, ``uint8`` ``(N, C, H, W)``, or a table's rows, ``float32``
    ``(N, D, 1, 1)``; None for files."""
    skipped: list[tuple[str, str]] | None = None
    """Entries left out before any image is read (a listed file that does not exist)."""

    @property
    def labelled(self) -> bool:
        """Some image has a label: the output gets a label column and an accuracy."""
        return any(item.label is not None for item in self.items)


def class_index(name: str, classes: Sequence[str]) -> int | None:
    """The position of class ``name`` in ``classes``: the same name, or the same with each
    ``/`` written ``_`` (how a class name with a slash names a folder); None if none."""
    if name in classes:
        return list(classes).index(name)
    key = name.replace("/", "_")
    for i, c in enumerate(classes):
        if c.replace("/", "_") == key:
            return i
    return None


def split_name(text: str) -> tuple[str, str] | None:
    """``(dataset, split)`` for ``NAME:SPLIT`` naming a known dataset, else None."""
    from mwnet.data.sources import canonical_name

    name, sep, split = text.rpartition(":")
    if not sep or not name or not split:
        return None
    try:
        return canonical_name(name), split
    except DatasetError:
        return None


def open_inputs(
    text: str,
    classes: Sequence[str],
    data_root: str | os.PathLike[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Inputs:
    """The images ``text`` names (see the module docstring), labelled by ``classes``.

    Raises:
        DatasetError: nothing there, a folder without image files, a malformed list file
            or a label out of range (naming the line), an unknown dataset split, or
            dataset files that cannot be found.
    """
    path = Path(text)
    if path.is_dir():
        return _folder(path, classes)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return Inputs("image", [Item(str(path), path, None)])
        return _list(path, classes, Path(image_root) if image_root else path.parent)
    named = split_name(text)
    if named is not None:
        return _split(*named, data_root)
    if path.exists():
        raise DatasetError(f"{text}: not a folder, an image or a list file")
    if ":" in text:
        from mwnet.data.sources import DATASET_NAMES

        raise DatasetError(
            f"{text}: no such file or folder, nor a split of a dataset mwnet reads "
            f"({', '.join(DATASET_NAMES)}), e.g. fashion-mnist:test"
        )
    raise DatasetError(
        f"{text}: no such file or folder; give an image folder, a list file of "
        "'relative/path [label]' lines, an image, or a dataset split such as fashion-mnist:test"
    )


def _folder(root: Path, classes: Sequence[str]) -> Inputs:
    files, _ = image_files(root)
    if not files:
        raise DatasetError(
            f"{root}: no image files under it ({', '.join(IMAGE_EXTENSIONS)}); point at the "
            "folder that holds the images"
        )
    items = []
    for file in files:
        label = None
        for folder in reversed(file.relative_to(root).parts[:-1]):  # nearest first
            found = class_index(folder, classes)
            if found is not None:
                label = classes[found]
                break
        items.append(Item(str(file), file, label))
    return Inputs("folder", items)


def _list(list_file: Path, classes: Sequence[str], image_root: Path) -> Inputs:
    items, missing = [], []
    for loc, relative, label in list_entries(list_file, labels_required=False):
        if label is not None and not 0 <= label < len(classes):
            raise DatasetError(
                f"{loc}: label {label} out of range: the model has {len(classes)} classes "
                f"(labels 0..{len(classes) - 1})"
            )
        file = image_root / relative
        name = str(file)
        if not file.is_file():
            problem = "is a folder, not an image file" if file.is_dir() else "does not exist"
            missing.append((name, f"listed at {loc}: {problem}"))
            continue
        items.append(Item(name, file, None if label is None else classes[label]))
    if not items and not missing:
        raise DatasetError(f"{list_file}: no entries")
    return Inputs("list", items, skipped=missing)


def _split(name: str, split: str, data_root: str | os.PathLike[str] | None) -> Inputs:
    from mwnet.data import load_dataset

    dataset = load_dataset(name, split, root=data_root, download=False)
    labels = dataset.labels.tolist()
    items = [Item(str(i), None, dataset.classes[y], i) for i, y in enumerate(labels)]
    return Inputs("split", items, column="index", images=dataset.images)


def open_table_inputs(text: str, table: dict) -> Inputs:
    """The rows of the table file ``text`` for a model trained on a table; ``table`` is the
    model file's ``input.table`` (the columns the run read, and its feature names).

    Raises:
        DatasetError: what :func:`~mwnet.data.table.read_table` refuses, and a table whose
            features are not the ones the model was trained on (named).
    """
    import numpy as np

    from mwnet.data.table import TableColumns, read_table

    expected = tuple(table["feature_names"])
    embedding = table.get("embedding_column")
    # The columns by the names the model was trained on, in its order, whatever order
    # the file has them in and whatever else it holds (an embedding's entries excepted).
    named = tuple(f for f in expected if not (embedding and f.startswith(f"{embedding}[")))
    trusted = table.get("trusted_column")
    columns = TableColumns(
        label=str(table["label_column"]),
        features=named,
        embedding=embedding,
        id=table.get("id_column"),
        ignore=() if trusted is None else (str(trusted),),
    )
    rows = read_table(text, columns, labels_required=False)
    if rows.feature_names != expected:  # an embedding of another length
        missing = [f for f in expected if f not in rows.feature_names]
        extra = [f for f in rows.feature_names if f not in expected]
        detail = (
            (f"missing {', '.join(missing[:5])}" if missing else f"extra {', '.join(extra[:5])}")
            if missing or extra
            else "in another order"
        )
        raise DatasetError(
            f"{text}: its features are not the {len(expected)} the model was trained on "
            f"({detail}); give a table with the training table's feature columns"
        )
    items = [
        Item(name, None, label or None, i)
        for i, (name, label) in enumerate(zip(rows.ids, rows.labels, strict=True))
    ]
    x = torch.from_numpy(rows.features.astype(np.float32)).reshape(len(rows), -1, 1, 1)
    return Inputs("table", items, column="id", images=x.contiguous())
