"""Turn a resolved config into data on the device, a model, its optimizer and a method.

The order of the data steps is the paper's: the clean meta set is carved from the
training set first, then the rest is subsampled into a long tail (if asked), then its
labels are corrupted. Every step is seeded by ``cfg.seed``, so methods compared under the
same seed see identical data, split and noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from mwnet import models
from mwnet.data import (
    CIFAR_NORMALIZE,
    Augment,
    DeviceBatches,
    EndlessBatches,
    ImageDataset,
    Normalize,
    corrupt,
    default_meta_per_class,
    load_dataset,
    load_image_folder,
    load_image_list,
    long_tail_counts,
    long_tail_indices,
    meta_split,
    val_split,
)
from mwnet.data.label_edits import apply_label_edits, read_label_edits
from mwnet.distributed import DataParallel, ShardedStream
from mwnet.methods import (
    CrossEntropy,
    Method,
    MethodDescriptor,
    build_method,
    method_descriptor,
)
from mwnet.run.weight_net_file import load_weight_net
from mwnet.train.config import ConfigError, builds_teacher
from mwnet.train.preflight import check_model_fits
from mwnet.train.pseudo_meta_set import PseudoMetaStream
from mwnet.train.sample_pass import DatasetPass
from mwnet.train.teacher import EmaTeacher
from mwnet.train.training_views import AugmentedViews

IMAGENET_NORMALIZE = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass
class TrainData:
    """The three sets of a run, in memory as uint8, with the record of what was corrupted."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    """Observed (possibly corrupted) labels: what the methods train on."""
    true_labels: torch.Tensor
    corrupted: torch.Tensor
    meta_images: torch.Tensor
    meta_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    realized_noise_rate: float | None
    """Share of training labels the synthetic noise changed (0.0 for a dataset's own
    labels, taken as right); None for a user's own images (``data.dataset`` folder or list)
    without synthetic noise: how many of their labels are wrong is not known."""
    source_index: torch.Tensor | None = None
    """Each training sample's index in the dataset's training split (stable across runs of
    any meta split, long tail or subset); None: the training samples are that split."""
    paths: tuple[str, ...] | None = None
    """Each training sample's image file, for datasets read from files."""
    noise_known: bool = False
    """The labels were corrupted synthetically, so ``true_labels`` and ``corrupted`` are
    the truth; otherwise they only repeat the given labels."""
    val_images: torch.Tensor | None = None
    """The validation split (``data.val_size``): held out of the training set after the
    corruption, never trained on; None when there is none."""
    val_labels: torch.Tensor | None = None
    """Its observed labels, noisy like the training labels: all a user would have."""
    val_index: torch.Tensor | None = None
    """Each validation sample's index in the dataset's training split."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.train_labels, minlength=self.num_classes)

    @property
    def train_index(self) -> torch.Tensor:
        """Each training sample's index in the dataset's training split."""
        if self.source_index is None:
            return torch.arange(len(self.train_labels))
        return self.source_index


def _list_path(cfg_data: Any, name: str) -> Path:
    path = Path(getattr(cfg_data, name))
    return path if path.is_absolute() else Path(cfg_data.root) / path


def _load_sources(d: Any) -> tuple[ImageDataset, ImageDataset, ImageDataset | None]:
    """(train, test, explicit meta set or None) for the configured dataset."""
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


def _carve_from_own_labels(cfg: Any) -> bool:
    """A user's own images carry the labels in question: a meta set carved from them
    would be as noisy as they are, so it is never done. A method that needs a trusted set
    is refused; the others train on every image."""
    d = cfg.data
    if not method_descriptor(cfg.method.name).reads_meta:
        return False
    where = f"{d.root}/meta/<class>/..." if d.dataset == "folder" else "data.meta_list=FILE"
    raise ConfigError(
        f"method.name={cfg.method.name} needs a trusted set of correctly labelled images, "
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
            f"class {classes[c]!r} has {int(counts[c])} training images, fewer than the "
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


def prepare_data(cfg: Any) -> TrainData:
    """Load, split, subsample and corrupt as configured (see the module docstring)."""
    d, seed = cfg.data, int(cfg.seed)
    train, test, meta = _load_sources(d)
    _check_training_classes(train, d)
    num_classes = len(train.classes)
    labels = train.labels
    no_clean_set = d.meta_source == "auto"
    carve = meta is None and (not no_clean_set or d.holdout_meta)
    if carve and d.dataset in ("folder", "list") and d.noise == "none":
        carve = _carve_from_own_labels(cfg)
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
    if d.noise == "none":
        observed, corrupted, rate = (
            true_labels.clone(),
            torch.zeros_like(true_labels, dtype=torch.bool),
            0.0,
        )
    else:
        matrix = d.noise_matrix if d.noise == "matrix" else None
        c = corrupt(
            true_labels,
            num_classes,
            d.noise,
            float(d.noise_rate),
            seed,
            matrix=matrix,
            images=train.images,
            index=train_idx,
        )
        observed, corrupted, rate = c.labels, c.corrupted, float(c.realized_rate)
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
        realized_noise_rate=None if d.dataset in ("folder", "list") and d.noise == "none" else rate,
        source_index=train_idx,
        paths=None if paths is None else tuple(paths[i] for i in train_idx.tolist()),
        noise_known=d.noise != "none",
        val_images=val_images,
        val_labels=val_labels,
        val_index=val_index,
    )


def resolve_device(name: str) -> torch.device:
    """The device ``device=name`` means here, checked to exist before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device={name} but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=cpu or auto")
    return device


def _normalization(cfg: Any, data: TrainData) -> Normalize | None:
    mode = cfg.data.normalize
    if mode == "none":
        return None
    if mode == "imagenet":
        return IMAGENET_NORMALIZE
    if cfg.data.dataset in ("cifar10", "cifar100"):
        return CIFAR_NORMALIZE
    return Normalize.from_images(data.train_images)


def model_options(cfg: Any, data: TrainData) -> dict[str, Any]:
    """The keyword arguments the run's model is built with: ``model.options`` as plain
    containers, and the image size for the models that need it (the model file records
    them, so that the same architecture is built again)."""
    options = cfg.model.options
    if OmegaConf.is_config(options):
        options = OmegaConf.to_container(options, resolve=True)
    options = dict(options)
    if cfg.model.name in ("cnn_small", "mlp"):
        options.setdefault("image_size", int(data.train_images.shape[2]))
    return options


def build_model(cfg: Any, data: TrainData) -> nn.Module:
    c = data.train_images.shape[1]
    options = model_options(cfg, data)
    try:
        return models.build(cfg.model.name, num_classes=data.num_classes, in_channels=c, **options)
    except TypeError as err:
        raise ConfigError(f"model.options do not fit model {cfg.model.name!r}: {err}") from None


def new_optimizer(cfg: Any, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with the run's ``optim.*`` settings over ``parameters``."""
    o = cfg.optim
    return torch.optim.SGD(
        parameters,
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )


NETWORK_SEED_STRIDE = 1_000_003
"""Spaces the seeds of a run's extra networks away from the seeds of nearby runs."""


def new_network(
    cfg: Any, data: TrainData, parallel: DataParallel | None, device: torch.device, k: int
) -> nn.Module:
    """Another network of the run's architecture (the ``k``-th, from 1), initialised from
    its own seed without moving the global random state: the same in every run, rank and
    resume with this seed. It starts fresh: ``model.init_from`` is the first network's."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"new_network(k) numbers the extra networks from 1, got {k!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed) + NETWORK_SEED_STRIDE * k)
        network = build_model(cfg, data)
    return use_sync_bn(cfg, network, parallel).to(device)


def load_initial_model(cfg: Any, model: nn.Module) -> None:
    """Load ``model.init_from`` (a run directory or its checkpoint) into ``model``."""
    from mwnet.run import CheckpointError, load_checkpoint

    path = Path(cfg.model.init_from)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: an mwnet checkpoint without a model; point at a run's")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[0][:160]
        raise ConfigError(
            f"model.init_from={cfg.model.init_from}: its model does not fit "
            f"model.name={cfg.model.name} with these model.options ({detail}); use the source "
            "run's model settings"
        ) from None


def build_schedule(
    cfg: Any, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule; the virtual step always reads the current lr."""
    o = cfg.optim
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs)
    milestones = list(o.milestones) if o.schedule == "multistep" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=o.gamma)


def check_shards(cfg: Any, data: TrainData, world_size: int) -> None:
    """Every rank needs a share of every batch: batch sizes divisible by the number of
    ranks, and no epoch-final partial batch smaller than it."""
    d = cfg.data
    for key, size in (
        ("data.batch_size", d.batch_size),
        ("data.meta_batch_size", d.meta_batch_size),
    ):
        if size % world_size:
            raise ConfigError(
                f"{key}={size} is not divisible by the {world_size} ranks; each rank trains on "
                f"an equal share of every batch. Choose a multiple of {world_size}"
            )
    sets = [("training", len(data.train_labels), "data.batch_size", d.batch_size)]
    if method_descriptor(cfg.method.name).trains_on_meta:
        sets.append(("meta", len(data.meta_labels), "data.meta_batch_size", d.meta_batch_size))
    for name, n, key, size in sets:
        last = n % size
        if 0 < last < world_size:
            raise ConfigError(
                f"the last {name} batch of each epoch has {last} sample(s), fewer than the "
                f"{world_size} ranks; change {key} (or data.subset) so that {n} samples leave "
                f"no remainder or one of at least {world_size}"
            )


def use_sync_bn(cfg: Any, model: nn.Module, parallel: DataParallel | None) -> nn.Module:
    """BatchNorm over the global batch when ``distributed.sync_bn`` asks for it."""
    if not cfg.distributed.sync_bn or parallel is None:
        return model
    if parallel.device.type != "cuda" or parallel.backend != "nccl":
        raise ConfigError(
            "distributed.sync_bn=true needs CUDA devices and the nccl backend (torch's "
            f"SyncBatchNorm runs on GPUs only), but this job uses {parallel.device.type} with "
            f"{parallel.backend}; drop distributed.sync_bn (each rank then normalises over "
            "its own shard of the batch)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def reused_weight_net(cfg: Any, num_classes: int) -> nn.Module | None:
    """The weighting net of ``method.mwnet.net_from``, checked against this run."""
    m = cfg.method
    w = m.get("mwnet")
    if w is None or not w.net_from:
        return None
    saved = load_weight_net(w.net_from)
    kind = "cmwnet" if method_descriptor(m.name).class_aware else "mwnet"
    if saved.kind != kind:
        raise ConfigError(
            f"{saved.path} holds a {saved.kind} weighting net, but method.name={m.name}; "
            f"set method.name={saved.kind} (or {saved.kind}-sl) to use it"
        )
    if saved.num_classes is not None and saved.num_classes != num_classes:
        raise ConfigError(
            f"{saved.path} was learned for {saved.num_classes} classes, but this data has "
            f"{num_classes}; a class-aware weighting net only applies to the same classes"
        )
    inputs = tuple(w.inputs)
    if saved.inputs != inputs:
        listed = ",".join(saved.inputs)
        raise ConfigError(
            f"{saved.path} holds a weighting net that reads {', '.join(saved.inputs)}, but "
            f"method.mwnet.inputs=[{','.join(inputs)}]; set method.mwnet.inputs=[{listed}] "
            "to use it"
        )
    decay = saved.dynamics_decay
    if decay is not None and decay != w.dynamics_decay:
        raise ConfigError(
            f"{saved.path} was learned on per-sample averages with method.mwnet."
            f"dynamics_decay={decay}, but this run uses {w.dynamics_decay}; its inputs mean the "
            f"same only with the same decay: set method.mwnet.dynamics_decay={decay}"
        )
    if saved.normalize != w.normalize:
        raise ConfigError(
            f"{saved.path} was learned with method.mwnet.normalize={saved.normalize}, but this "
            f"run uses {w.normalize}; its weights mean the same only under the same "
            f"normalisation: set method.mwnet.normalize={saved.normalize}"
        )
    return saved.net


class NoMetaSet:
    """The meta stream of a run without a trusted set (a user's own images trained by a
    method that reads none): it has no batches, and its state is empty. Methods that read
    a meta set are refused such data before this is built."""

    def __iter__(self) -> NoMetaSet:
        return self

    def __next__(self) -> Any:
        raise StopIteration

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class Experiment:
    """Everything a training loop touches, built from one config."""

    cfg: Any
    device: torch.device
    data: TrainData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    method: Method
    train_batches: DeviceBatches
    meta_batches: EndlessBatches | PseudoMetaStream | NoMetaSet
    """The clean meta set's stream, or with data.meta_source=auto the pseudo-meta set's."""
    meta_epochs: DeviceBatches
    """The meta set as epochs, for methods that train on it (finetune)."""
    normalize: Normalize | None
    warmup: Method | None = None
    """Plain cross-entropy for the first ``method.warmup_epochs`` epochs."""
    teacher: EmaTeacher | None = None
    """The EMA of the model: label correction's soft labels, the pseudo-meta scorer."""

    @property
    def total_epochs(self) -> int:
        return int(self.cfg.optim.epochs) + int(self.method.extra_epochs)

    @property
    def descriptor(self) -> MethodDescriptor:
        """The registered description of the run's method."""
        return method_descriptor(self.cfg.method.name)

    @property
    def pseudo_meta(self) -> PseudoMetaStream | None:
        """The pseudo-meta stream to refill every epoch, when the method reads one."""
        stream = self.meta_batches
        reads = method_descriptor(self.cfg.method.name).reads_meta
        return stream if reads and isinstance(stream, PseudoMetaStream) else None

    def method_at(self, epoch: int) -> Method:
        """The method that trains epoch ``epoch`` (from 0): the warm-up's, then the run's."""
        if self.warmup is not None and epoch < int(self.cfg.method.warmup_epochs):
            return self.warmup
        return self.method


def build_experiment(
    cfg: Any, data: TrainData | None = None, parallel: DataParallel | None = None
) -> Experiment:
    """Data, model, optimizer, schedule, method and batch iterators for ``cfg``.

    With ``parallel`` every rank builds the same experiment (same seeds: same model, same
    global batches) on its own device, and the method trains on this rank's shards.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device) if parallel is None else parallel.device
    if cfg.amp != "none" and device.type != "cuda":
        raise ConfigError(f"amp={cfg.amp} needs a CUDA device; use amp=none on {device.type}")
    torch.manual_seed(int(cfg.seed))
    data = data if data is not None else prepare_data(cfg)
    if parallel is not None:
        check_shards(cfg, data, parallel.world_size)
    model = build_model(cfg, data)
    if cfg.model.init_from:
        load_initial_model(cfg, model)
    model = use_sync_bn(cfg, model, parallel).to(device)
    optimizer = new_optimizer(cfg, model.parameters())
    o = cfg.optim
    normalize = _normalization(cfg, data)
    check_model_fits(model, data, normalize, device, cfg.model.name)
    d = cfg.data
    augment = Augment(d.padding, d.pad_mode, d.flip) if d.augment else None
    seed = int(cfg.seed)
    # The meta batches get the training augmentation too, as in the paper.
    shared = {"device": device, "shuffle": True, "augment": augment, "normalize": normalize}
    meta_set = (data.meta_images, data.meta_labels, d.meta_batch_size)
    train_batches = DeviceBatches(
        data.train_images, data.train_labels, d.batch_size, seed=seed, indices_too=True, **shared
    )
    no_clean_set = d.meta_source == "auto"
    if no_clean_set:
        meta_batches = PseudoMetaStream(d.meta_batch_size, device, augment, normalize, seed)
    else:
        meta_batches = (
            EndlessBatches(*meta_set, seed=seed + 1, **shared)
            if len(data.meta_labels)
            else NoMetaSet()
        )
    meta_epochs = DeviceBatches(*meta_set, seed=seed + 2, indices_too=True, **shared)
    described = method_descriptor(cfg.method.name)
    options = {
        **{group: OmegaConf.to_object(cfg.method[group]) for group in described.options},
        "compile": bool(cfg.method.compile),
        "epochs": int(o.epochs),
    }
    weight_net = reused_weight_net(cfg, data.num_classes)
    teacher = None
    if builds_teacher(described, d):
        teacher = EmaTeacher(model, decay=float(cfg.method.teacher.decay))
    soft_labels = teacher is not None and described.reads_teacher
    reducer = None if parallel is None else parallel.reducer
    warmup = CrossEntropy(model, optimizer, reducer=reducer) if cfg.method.warmup_epochs else None
    passes = {"normalize": normalize, "device": device, "parallel": parallel}
    passes["batch_size"] = int(d.eval_batch_size)
    method = build_method(
        cfg.method.name,
        model=model,
        optimizer=optimizer,
        meta_batches=meta_batches if parallel is None else ShardedStream(meta_batches, parallel),
        class_counts=data.class_counts(),
        options=options,
        reducer=reducer,
        weight_net=weight_net,
        soft_labels=teacher.soft_labels if teacher and soft_labels else None,
        soft_label_model=teacher.module if teacher and soft_labels else None,
        training_set=DatasetPass(data.train_images, data.train_labels, **passes),
        meta_set=DatasetPass(data.meta_images, data.meta_labels, **passes),
        new_network=lambda k: new_network(cfg, data, parallel, device, k),
        new_optimizer=lambda parameters: new_optimizer(cfg, parameters),
        seed=seed,
        augment=AugmentedViews(train_batches.images, augment, normalize),
    )
    return Experiment(
        cfg=cfg,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        schedule=build_schedule(cfg, optimizer),
        method=method,
        train_batches=train_batches,
        meta_batches=meta_batches,
        meta_epochs=meta_epochs,
        normalize=normalize,
        warmup=warmup,
        teacher=teacher,
    )
