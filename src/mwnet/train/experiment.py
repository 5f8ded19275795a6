"""Turn a resolved config into data on the device, a model, its optimizer and a method.

The data itself is assembled by :func:`mwnet.data.prepare` (sources, meta split, long
tail, noise, validation split, label edits), seeded by ``cfg.seed``, so methods compared
under the same seed see identical data, split and noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from mwnet import models
from mwnet.config import ConfigError, builds_teacher
from mwnet.data import (
    CIFAR_NORMALIZE,
    Augment,
    DeviceBatches,
    EndlessBatches,
    Normalize,
    TrainData,
    is_features,
    prepare,
)
from mwnet.distributed import DataParallel, ShardedStream
from mwnet.methods import (
    CrossEntropy,
    Method,
    MethodDescriptor,
    build_method,
    method_descriptor,
)
from mwnet.run.weight_net_file import load_weight_net
from mwnet.train.preflight import check_model_fits
from mwnet.train.pseudo_meta_set import PseudoMetaStream
from mwnet.train.sample_pass import DatasetPass
from mwnet.train.teacher import EmaTeacher
from mwnet.train.training_views import AugmentedViews

IMAGENET_NORMALIZE = Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def prepare_data(cfg: Any) -> TrainData:
    """The data of the run ``cfg`` describes: :func:`mwnet.data.prepare` of its ``data``
    config and seed, told whether its method reads a trusted meta set."""
    name = cfg.method.name
    meta_reader = name if method_descriptor(name).reads_meta else None
    return prepare(cfg.data, int(cfg.seed), meta_reader=meta_reader)


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
    if cfg.model.name in ("cnn_small", "mlp", "linear"):
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
    history = saved.history
    if history is not None and history != w.history:
        raise ConfigError(
            f"{saved.path} was learned on loss sequences of method.mwnet.history={history} "
            f"visits, but this run uses {w.history}; its input has {history} columns: set "
            f"method.mwnet.history={history}"
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
    # Table rows have no pixels to shift or flip: data.augment applies to images only.
    features = is_features(data.train_images)
    augment = Augment(d.padding, d.pad_mode, d.flip) if d.augment and not features else None
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
