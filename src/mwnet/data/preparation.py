"""Load, split, subsample and corrupt the data of a run as its ``data.*`` config says.

The order of the steps is the paper's: the clean meta set is carved from the training
set first, then the rest is subsampled into a long tail (if asked), then its labels are
corrupted; a validation split (``data.val_size``) is held out of the corrupted set, and
label edits (``data.exclude``, ``data.relabel``) apply last. Every step is seeded by the
run's seed, so methods compared under the same seed see identical data, split and noise.

:func:`prepare` is the one entry point; the config's checks here raise
:class:`~mwnet.data.errors.ConfigError` naming the ``data.*`` key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import ImageDataset
from mwnet.data.errors import ConfigError
from mwnet.data.image_folder import load_image_folder, load_image_list
from mwnet.data.label_edits import apply_label_edits, edits_by_id, read_label_edits
from mwnet.data.long_tail import long_tail_counts, long_tail_indices
from mwnet.data.meta_split import default_meta_per_class, meta_split
from mwnet.data.noise import corrupt
from mwnet.data.sources import load_dataset
from mwnet.data.table_sets import load_table_sets
from mwnet.data.train_data import TrainData
from mwnet.data.val_split import val_split


def _list_path(cfg_data: Any, name: str) -> Path:
    path = Path(getattr(cfg_data, name))
    return path if path.is_absolute() else Path(cfg_data.root) / path


OWN_DATA = ("folder", "list", "table")
"""The datasets of a user's own labels: how many are wrong is unknown, and a meta set is
never carved from them (only given: a meta folder, list or trusted rows)."""


def _load_sources(d: Any, seed: int = 0) -> tuple[ImageDataset, ImageDataset, ImageDataset | None]:
    """(train, test, explicit meta set or None) for the configured dataset."""
    if d.dataset == "table":
        return load_table_sets(d, seed)
    if d.dataset in ("folder", "list") and not d.root:
        raise ConfigError(
            f"data.dataset={d.dataset} needs data.root=PATH (the folder holding the images)"
        )
    if d.dataset == "folder":
        root = Path(d.root)
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise ConfigError(
                f"data.dataset=folder expects {root}/train/<class>/... and {root}/test/<class>/..."
                f"; missing: {', '.join(missing)}"
            )
        train = load_image_folder(root / "train", d.image_size)
        test = load_image_folder(root / "test", d.image_size, classes=train.classes)
        meta = None
        if (root / "meta").is_dir():
            meta = load_image_folder(root / "meta", d.image_size, classes=train.classes)
        return train, test, meta
    if d.dataset == "list":
        if not d.test_list:
            raise ConfigError("data.dataset=list needs data.test_list=PATH as well")
        train = load_image_list(_list_path(d, "train_list"), d.root, d.image_size)
        test = load_image_list(_list_path(d, "test_list"), d.root, d.image_size, train.classes)
        meta = None
        if d.meta_list:
            meta = load_image_list(_list_path(d, "meta_list"), d.root, d.image_size, train.classes)
        return train, test, meta
    return (
        load_dataset(d.dataset, "train", root=d.root, download=d.download),
        load_dataset(d.dataset, "test", root=d.root, download=d.download),
        None,
    )


def _training_source(d: Any) -> str:
    if d.dataset == "folder":
        return str(Path(d.root) / "train")
    if d.dataset == "list":
        return f"data.train_list={d.train_list}"
    if d.dataset == "table":
        return f"data.table.path={d.table.path}"
    return f"data.dataset={d.dataset}"


def _check_training_classes(train: ImageDataset, d: Any) -> None:
    """A training set is refused unless it has two classes or more, each with an image.

    One class leaves nothing to tell apart; a class without images gets an output the
    model can never learn (and a list file whose labels skip a number usually numbers its
    classes from 1, or is the wrong file).
    """
    source = _training_source(d)
    if len(train.classes) < 2:
        raise ConfigError(
            f"the training set ({source}) has a single class, {train.classes[0]!r}; a "
            "classifier needs images of at least two classes"
        )
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    empty = [c for c in range(len(train.classes)) if int(counts[c]) == 0]
    if empty:
        names = ", ".join(repr(train.classes[c]) for c in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise ConfigError(
            f"the training set ({source}) has no image of class(es) {names}{more} out of "
            f"{len(train.classes)}; every class needs training images (list labels number "
            "the classes 0..K-1)"
        )


def _carve_from_own_labels(d: Any, meta_reader: str | None) -> bool:
    """A user's own images carry the labels in question: a meta set carved from them
    would be as noisy as they are, so it is never done. A method that needs a trusted set
    (``meta_reader``, its name) is refused; the others train on every image."""
    if meta_reader is None:
        return False
    where = {
        "folder": f"{d.root}/meta/<class>/...",
        "list": "data.meta_list=FILE",
        "table": "data.table.trusted_column=COLUMN (a 1/0 flag) or data.table.trusted_path=FILE",
    }[d.dataset]
    raise ConfigError(
        f"method.name={meta_reader} needs a trusted set of correctly labelled samples, "
        f"and data.dataset={d.dataset} gives none: put some in {where}, or train without "
        "one with data.meta_source=auto (a pseudo-meta set picked from the training data; "
        "see the README). The training labels themselves are never taken as trusted"
    )


def _meta_split(
    labels: torch.Tensor, classes: list[str], per_class: int, seed: int, d: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`meta_split`, with its size errors phrased in the config's keys."""
    counts = torch.bincount(labels, minlength=len(classes))
    short = [c for c in range(len(classes)) if int(counts[c]) < per_class]
    if short:
        c = short[0]
        raise ConfigError(
            f"class {classes[c]!r} has {int(counts[c])} training samples, fewer than the "
            f"{per_class} per class the clean meta set takes (data.meta_per_class); set "
            f"data.meta_per_class to at most {int(counts.min())}, or give a trusted set"
        )
    emptied = [c for c in range(len(classes)) if int(counts[c]) == per_class]
    if emptied:
        raise ConfigError(
            f"data.meta_per_class={per_class} puts every sample of class {classes[emptied[0]]!r} "
            "into the meta set, leaving none of it to train on; choose data.meta_per_class "
            f"below {per_class}"
        )
    return meta_split(labels, len(classes), per_class, seed)


def _noisy_labels(
    d: Any,
    true_labels: torch.Tensor,
    num_classes: int,
    seed: int,
    images: torch.Tensor,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The observed labels of the training samples (``images[index]``), which of them the
    synthetic noise (``data.noise``) changed, and the share it changed: every noise kind
    is applied here, through :func:`~mwnet.data.noise.corrupt`."""
    if d.noise == "none":
        return true_labels.clone(), torch.zeros_like(true_labels, dtype=torch.bool), 0.0
    matrix = d.noise_matrix if d.noise == "matrix" else None
    c = corrupt(
        true_labels,
        num_classes,
        d.noise,
        float(d.noise_rate),
        seed,
        matrix=matrix,
        images=images,
        index=index,
    )
    return c.labels, c.corrupted, float(c.realized_rate)


def prepare(d: Any, seed: int, *, meta_reader: str | None = None) -> TrainData:
    """The data of a run: load, split, subsample and corrupt as ``d`` (the ``data``
    config) says, every step seeded by ``seed`` (see the module docstring).

    Args:
        d: the run's ``data.*`` config.
        seed: the run's seed.
        meta_reader: the name of the run's method if it reads a trusted meta set, else
            None: a user's own data (``data.dataset`` folder, list or table) without one
            is refused for such a method, and trained on whole for the others.

    Raises:
        ConfigError: a ``data.*`` value these files cannot be used with (named, with the fix).
        DataError: a file that cannot be read or a label edit that does not fit.
    """
    seed = int(seed)
    train, test, meta = _load_sources(d, seed)
    _check_training_classes(train, d)
    num_classes = len(train.classes)
    labels = train.labels
    no_clean_set = d.meta_source == "auto"
    carve = meta is None and (not no_clean_set or d.holdout_meta)
    if carve and d.dataset in OWN_DATA and d.noise == "none":
        carve = _carve_from_own_labels(d, meta_reader)
    if carve:
        setting = "imbalance" if d.imbalance_factor > 1 else "noise"
        per_class = d.meta_per_class or default_meta_per_class(setting, num_classes)
        train_idx, meta_idx = _meta_split(labels, train.classes, per_class, seed, d)
        meta_images, meta_labels = train.images[meta_idx], labels[meta_idx]
    elif meta is None:
        train_idx = torch.arange(len(labels))
        meta_images, meta_labels = train.images[:0], labels[:0]
    else:
        train_idx = torch.arange(len(labels))
        meta_images, meta_labels = meta.images, meta.labels
    if no_clean_set:  # a held-out split stays out of training and is never read
        meta_images, meta_labels = meta_images[:0], meta_labels[:0]
    if d.imbalance_factor > 1:
        n_max = int(torch.bincount(labels[train_idx], minlength=num_classes).min())
        counts = long_tail_counts(
            n_max, num_classes, float(d.imbalance_factor), d.imbalance_profile
        )
        train_idx = train_idx[long_tail_indices(labels[train_idx], counts, seed)]
    if d.subset is not None and d.subset < len(train_idx):
        keep = np.sort(np.random.default_rng(seed).choice(len(train_idx), d.subset, replace=False))
        train_idx = train_idx[torch.from_numpy(keep)]
    true_labels = labels[train_idx]
    observed, corrupted, rate = _noisy_labels(
        d, true_labels, num_classes, seed, train.images, train_idx
    )
    val_images = val_labels = val_index = None
    if d.val_size:
        if d.val_size >= len(train_idx):
            raise ConfigError(
                f"data.val_size={d.val_size} holds out all {len(train_idx)} training samples; "
                f"choose fewer (at most {len(train_idx) - 1})"
            )
        keep, held = val_split(len(train_idx), int(d.val_size), seed)
        val_index, val_labels = train_idx[held], observed[held]
        val_images = train.images[val_index]
        train_idx, true_labels = train_idx[keep], true_labels[keep]
        observed, corrupted = observed[keep], corrupted[keep]
        rate = float(corrupted.float().mean()) if d.noise != "none" else 0.0
    if d.exclude or d.relabel:
        exclude = read_label_edits(d.exclude, relabel=False) if d.exclude else None
        relabel = read_label_edits(d.relabel, relabel=True) if d.relabel else None
        if exclude is not None:
            exclude = edits_by_id(exclude, train.ids, train.classes, "data.exclude")
        if relabel is not None:
            relabel = edits_by_id(relabel, train.ids, train.classes, "data.relabel")
        keep, observed = apply_label_edits(
            train_idx,
            observed,
            num_classes,
            exclude,
            relabel,
            classes=train.classes,
            spare_classes=bool(d.exclude_spares_classes),
        )
        train_idx, true_labels, observed = train_idx[keep], true_labels[keep], observed[keep]
        if d.noise == "none":  # no truth beyond the given labels, now edited
            true_labels = observed.clone()
        corrupted = observed != true_labels
        rate = float(corrupted.float().mean()) if d.noise != "none" else 0.0
    paths = train.paths
    return TrainData(
        train_images=train.images[train_idx],
        train_labels=observed,
        true_labels=true_labels,
        corrupted=corrupted,
        meta_images=meta_images,
        meta_labels=meta_labels,
        test_images=test.images,
        test_labels=test.labels,
        classes=list(train.classes),
        realized_noise_rate=None if d.dataset in OWN_DATA and d.noise == "none" else rate,
        source_index=train_idx,
        paths=None if paths is None else tuple(paths[i] for i in train_idx.tolist()),
        ids=None if train.ids is None else tuple(train.ids[i] for i in train_idx.tolist()),
        feature_names=train.feature_names,
        noise_known=d.noise != "none",
        val_images=val_images,
        val_labels=val_labels,
        val_index=val_index,
    )
