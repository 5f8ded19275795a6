"""The training configuration: typed schemas, presets and ``key=value`` overrides.

OmegaConf structured configs give typed fields and reject unknown keys; this module adds
what OmegaConf cannot know: which string values are valid, and error messages that list
the valid keys or values.

The ``method`` group holds ``method.name``, the keys every method shares, and one group
of options per method as its descriptor declares them (``method.focal.gamma``,
``method.mwnet.normalize``): only the groups the chosen method reads. A key of a group
given on the command line while another method is chosen is an error; presets and
``--config`` files may carry groups of several methods, and the chosen method's apply.
Configs in the flat layout of earlier versions (``method.normalize``) are read through
:data:`mwnet.methods.flat_keys.FLAT_KEYS`.

It sits below train/ (it reads only data/ and methods/), so that the layers that read a
run directory (run/, label_issues/) load a run's ``config.yaml`` without the training
loop; ``mwnet.train.config`` is an alias of this module. :class:`ConfigError` is defined
in :mod:`mwnet.data.errors`, the lowest layer that raises it, and re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mwnet.data.errors import ConfigError
from mwnet.data.long_tail import PROFILES
from mwnet.data.noise import NOISE_KINDS
from mwnet.data.sources import DATASET_NAMES
from mwnet.methods.descriptor import MethodDescriptor
from mwnet.methods.flat_keys import FLAT_KEYS
from mwnet.methods.meta_schedule import parse_interval_schedule
from mwnet.methods.registry import method_descriptor, method_names, option_groups, readers


@dataclass
class TableConfig:
    """``data.table.*``: a table of features and labels (``data.dataset=table``): CSV,
    Parquet (``mwnet[parquet]``), ``.npz`` (arrays X/features, y/labels, optional ids and
    trusted) or ``.npy`` (features, with data.table.labels_path). Relative paths are read
    under data.root when it is set. Each row is one sample; its features are standardised
    with the training set's mean and standard deviation per feature (data.normalize=auto;
    none: used as they are), which the saved model keeps, so that predict applies the same:
    embeddings and tabular columns come on scales that differ by orders of magnitude, and
    SGD at one learning rate needs them on one. data.augment does not apply to tables."""

    path: str | None = None
    """The table of the training rows (with the trusted rows, when trusted_column marks them)"""
    label_column: str = "label"
    """The column of the given labels: class names (sorted into classes) or integers"""
    feature_columns: list[str] | None = None
    """The feature columns, in order; null: every column but the label, id, trusted and
    embedding columns (each must hold numbers)"""
    embedding_column: str | None = None
    """A column holding each row's vector, as JSON ([0.1, 0.2]) or numbers separated by
    spaces; its entries come first among the features"""
    id_column: str | None = None
    """A column naming each row (unique): label_issues.csv names rows by it, and
    data.exclude / data.relabel may list ids; null: rows are named by their number"""
    trusted_column: str | None = None
    """A column of 1/0 flags marking rows known to be labelled right: they form the clean
    meta set instead of a split carved from the training rows"""
    trusted_path: str | None = None
    """A separate table of rows known to be labelled right (the clean meta set), with the
    same columns"""
    test_path: str | None = None
    """A separate table of test rows; null: test_fraction of the rows is held out"""
    test_fraction: float = 0.2
    """Without test_path: the share of the (untrusted) rows held out as the test set, drawn
    under the seed; their labels are as noisy as the rest"""
    labels_path: str | None = None
    """For a .npy table: the 1-D .npy array of its labels"""


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    """fashion-mnist | mnist | cifar10 | cifar100 | folder | list | table (data.table.*)"""
    root: str | None = None
    """Where the files are; None searches $MWNET_DATA, system locations and the cache."""
    download: bool = True
    train_list: str | None = None
    """For dataset=list: the "relative/path label" file of the training set."""
    test_list: str | None = None
    meta_list: str | None = None
    """For dataset=list: a clean list file used as the meta set instead of a carved split."""
    image_size: int = 32
    """For dataset=folder|list: images are resized and centre-cropped to this size."""
    noise: str = "none"
    noise_rate: float = 0.0
    noise_matrix: str | None = None
    """For noise=matrix: a .npy or .csv row-stochastic K x K matrix."""
    imbalance_factor: float = 1.0
    imbalance_profile: str = "exp"
    meta_per_class: int | None = None
    """Clean meta images per class; None: 1000 in all for noise, 10 per class for imbalance."""
    meta_source: str = "clean"
    """clean (a trusted set: carved from the training set, or data.meta_list) | auto (no
    clean data at all: after the warm-up, every epoch picks a pseudo-meta set from the
    training set, the lowest-loss samples of each observed class)"""
    pseudo_meta_per_class: int = 10
    """meta_source=auto: samples per observed class in the pseudo-meta set (CMW-Net-SL: 10)"""
    pseudo_meta_scorer: str = "teacher"
    """meta_source=auto: whose loss ranks the samples: teacher (the EMA of the model) | model"""
    holdout_meta: bool = False
    """meta_source=auto: carve the clean split anyway and never read it, so the training set
    is the one clean-set runs of the same seed train on (for comparisons)"""
    subset: int | None = None
    """Keep only this many training images (seeded), for quick runs."""
    val_size: int = 0
    """Hold this many training samples out as a validation split, after the labels are
    corrupted (so its labels are as noisy as the training labels), seeded by the seed alone
    (the same samples for every method), never trained on; its accuracy is recorded every
    epoch (val_acc) for choosing hyperparameters without the test set. 0: none"""
    exclude: str | None = None
    """Train without the samples this file lists: a label_issues.csv from `mwnet issues`
    (its flagged rows), the run directory holding one, or one training-split index per line"""
    relabel: str | None = None
    """Train with new labels for the samples this file lists: a label_issues.csv (flagged
    rows get their likely_label), its run directory, or 'index label' lines"""
    exclude_spares_classes: bool = False
    """A class whose every training sample data.exclude lists keeps its samples (with a
    warning) instead of being refused: for pipelines that drop a run's flags unattended"""
    normalize: str = "auto"
    """auto (CIFAR constants for CIFAR, training-set statistics otherwise: per channel for
    images, per feature for tables) | imagenet | none"""
    augment: bool = True
    padding: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    batch_size: int = 100
    meta_batch_size: int = 100
    eval_batch_size: int = 500
    table: TableConfig = field(default_factory=TableConfig)
    """For dataset=table: the table files and their columns."""


@dataclass
class ModelConfig:
    name: str = "resnet32"
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the model builder (e.g. dropout, weights_path)."""
    init_from: str | None = None
    """Start from the model another run saved (its run directory or checkpoint.pt: the
    weights and BatchNorm statistics of its last epoch; same model and data shape). With
    method.name=finetune and optim.epochs=0 this fine-tunes that run's model on the clean
    set, e.g. after learned weighting"""


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    epochs: int = 60
    schedule: str = "multistep"
    """multistep (the paper's) | cosine | constant"""
    milestones: list[int] = field(default_factory=lambda: [40, 50])
    gamma: float = 0.1


@dataclass
class TeacherOptions:
    """``method.teacher.*``: the EMA teacher, present when the run has one (label
    correction's soft labels, or the pseudo-meta scorer of data.meta_source=auto)."""

    decay: float = 0.997
    """θ_teacher <- d θ_teacher + (1 - d) θ after every step"""
    freeze_epoch: int | None = None
    """Stop moving the teacher from this epoch on (CMW-Net-SL, asymmetric noise: 150)"""


@dataclass
class MethodConfig:
    """What every method shares; the option groups of the chosen method are added to it
    (:func:`method_schema`)."""

    name: str = "mwnet"
    compile: bool = False
    """torch.compile the model's passes: the methods whose descriptor compiles (the
    loss-only ones: ce, focal, class-balanced, gce, sce, bootstrap-hard, bootstrap-soft,
    self-paced, mentornet-pd; mentornet-dd; and the weighting methods with
    method.mwnet.hypergrad=fast; see docs/PERFORMANCE.md for what it gains)"""
    warmup_epochs: int = 0
    """plain cross-entropy for this many first epochs"""


TEACHER = "teacher"
"""The option group of the EMA teacher (not one method's: see :func:`builds_teacher`)."""


def builds_teacher(descriptor: MethodDescriptor, data: Any) -> bool:
    """The run keeps an EMA teacher: the method reads its soft labels, or it reads a meta
    set that is picked by the teacher's losses (data.meta_source=auto)."""
    return descriptor.reads_teacher or (
        descriptor.reads_meta
        and data.meta_source == "auto"
        and data.pseudo_meta_scorer == "teacher"
    )


def groups_read(name: str, data: Any) -> dict[str, type]:
    """The option groups a run of method ``name`` on ``data`` reads, ``{group: dataclass}``."""
    descriptor = method_descriptor(name)
    groups = dict(descriptor.options)
    if builds_teacher(descriptor, data):
        groups[TEACHER] = TeacherOptions
    return groups


def method_schema(groups: dict[str, type] | None = None) -> type:
    """:class:`MethodConfig` with the option groups ``groups`` (default: mwnet's)."""
    if groups is None:
        groups = groups_read(MethodConfig.name, DataConfig())
    return _method_schema(tuple(groups.items()))


_SCHEMA_PREFIX = "MethodConfig__"


@functools.cache
def _method_schema(groups: tuple[tuple[str, type], ...]) -> type:
    name = _SCHEMA_PREFIX + "__".join(g for g, _ in groups)
    fields = [(g, kind, field(default_factory=kind)) for g, kind in groups]
    schema = dataclasses.make_dataclass(name, fields, bases=(MethodConfig,))
    schema.__module__ = __name__  # found again by name when a config is unpickled
    return schema


def __getattr__(name: str) -> Any:
    """The method schema of a pickled config (one per set of option groups), rebuilt in
    the process that unpickles it."""
    if name.startswith(_SCHEMA_PREFIX):
        known = all_groups()
        groups = [g for g in name.removeprefix(_SCHEMA_PREFIX).split("__") if g]
        if all(g in known for g in groups):
            return _method_schema(tuple((g, known[g]) for g in groups))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _schema(groups: dict[str, type] | None = None) -> DictConfig:
    """The typed config of a run whose method reads ``groups``."""
    schema = OmegaConf.structured(TrainConfig)
    schema.method = OmegaConf.structured(method_schema(groups))
    return schema


@dataclass
class DistributedConfig:
    """Used only under torchrun with two or more processes (see the README)."""

    backend: str = "auto"
    """auto (nccl on GPUs, gloo on the CPU) | nccl | gloo"""
    timeout: float = 300.0
    """Seconds a rank waits for the others in any collective before the job fails with an
    error naming the lost rank (a rank that crashed is noticed at once)."""
    sync_bn: bool = False
    """BatchNorm over the global batch (torch.nn.SyncBatchNorm: CUDA and nccl only) instead
    of over each rank's shard."""


@dataclass
class TrainConfig:
    description: str = ""
    name: str | None = None
    """Run directory name under out_dir; None: <preset>-<method>-seed<seed>."""
    preset: str | None = None
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda | cuda:N"""
    amp: str = "none"
    """none | bf16 | fp16 (CUDA only): autocast of the forward passes"""
    threads: int | None = None
    eval_train: bool = True
    """Each epoch, measure accuracy on the clean vs corrupted training samples."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


CHOICES: dict[str, tuple[Any, ...]] = {
    "data.dataset": (*DATASET_NAMES, "folder", "list", "table"),
    "data.noise": ("none", *NOISE_KINDS),
    "data.imbalance_profile": PROFILES,
    "data.meta_source": ("clean", "auto"),
    "data.pseudo_meta_scorer": ("teacher", "model"),
    "data.normalize": ("auto", "imagenet", "none"),
    "data.pad_mode": ("reflect", "zero"),
    "optim.schedule": ("multistep", "cosine", "constant"),
    "amp": ("none", "bf16", "fp16"),
    "distributed.backend": ("auto", "nccl", "gloo"),
}
"""Valid values of the string keys outside the method's option groups (those are typed
with ``Literal`` in the method modules; ``method.name`` is a registered method)."""


def _presets_dir():
    return resources.files("mwnet") / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets (files starting with "_" are shared bases)."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in _presets_dir().iterdir()
        if p.name.endswith(".yaml") and not p.name.startswith("_")
    )


def _read_preset(name: str, seen: tuple[str, ...] = ()) -> DictConfig:
    """A preset's YAML, merged onto the preset named by its ``base`` key, if any."""
    path = _presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset {name!r}{_did_you_mean(name, preset_names())}; run "
            f"`mwnet presets` to list them"
        )
    raw = OmegaConf.create(path.read_text())
    base = raw.pop("base", None)
    if base is None:
        return raw
    if base in seen:
        raise ConfigError(f"preset {name!r}: circular base {base!r}")
    return OmegaConf.merge(_read_preset(base, (*seen, name)), raw)


def valid_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every settable dotted key (the option groups of every method), for error messages
    and documentation."""
    node = _schema(all_groups()) if node is None else node
    keys = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig) and key != "options":
            keys.extend(valid_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def all_groups() -> dict[str, type]:
    """Every option group of every registered method, and the teacher's."""
    return {**option_groups(), TEACHER: TeacherOptions}


def _group_readers(group: str) -> str:
    if group == TEACHER:
        teacher = [n for n in method_names() if method_descriptor(n).reads_teacher]
        return (
            f"{', '.join(teacher)}, and with data.meta_source=auto and "
            "data.pseudo_meta_scorer=teacher any method reading a meta set"
        )
    return ", ".join(readers(group))


def _upgrade_method(method: Any, notes: list[str] | None = None) -> dict[str, Any]:
    """A ``method`` mapping with the flat keys of earlier versions moved into their groups
    (every group a flat key may belong to: the unread ones are dropped later); ``notes``
    collects the flat keys found."""
    if not isinstance(method, dict):
        return method
    out: dict[str, Any] = {}
    for key, value in method.items():
        if key in FLAT_KEYS:
            for target in FLAT_KEYS[key]:
                group, option = target.split(".")
                if not isinstance(out.get(group), dict):
                    out[group] = {}
                out[group][option] = value
            if notes is not None:
                notes.append(key)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def _keep_read_groups(
    method: Any, read: dict[str, type], name: str, strict: bool, flat: tuple[str, ...] = ()
) -> None:
    """Drop the option groups in ``method`` that method ``name`` does not read; with
    ``strict`` (keys the user gave for this run) a set key of one is an error naming the
    methods that read it (``flat``: flat keys given, named as typed)."""
    if not isinstance(method, dict):
        return
    known = all_groups()
    for group in [g for g in method if g in known and g not in read]:
        given = method.pop(group)
        if not strict or given is None or given == {}:
            continue
        option = next(iter(given)) if isinstance(given, dict) else None
        key = f"method.{group}" + (f".{option}" if option else "")
        typed = [f for f in flat if f"{group}.{option}" in FLAT_KEYS[f]]
        if typed:
            others = [t for t in FLAT_KEYS[typed[0]] if t.split(".")[0] in read]
            if others:  # a flat key another group of the chosen method takes
                continue
            key = f"method.{typed[0]} (now {key})"
        raise ConfigError(
            f"{key} is read by {_group_readers(group)}, not by method.name={name}; drop it "
            "or choose one of those methods"
        )


def _final(layers: list[dict[str, Any]], dotted: str, default: Any) -> Any:
    """The value ``dotted`` ends with after the layers are merged in order."""
    value = default
    for layer in layers:
        node: Any = layer
        for part in dotted.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is not _UNSET:
            value = node
    return value


_UNSET = object()


def _resolve(layers: list[tuple[dict[str, Any], bool]], flat: tuple[str, ...] = ()) -> Any:
    """Merge config layers (``(mapping, strict)``, in order) onto the schema of the method
    they choose, keeping only the option groups it reads (see :func:`_keep_read_groups`)."""
    plain = [layer for layer, _ in layers]
    name = _final(plain, "method.name", MethodConfig.name)
    names = method_names()
    if name not in names:
        hint = _did_you_mean(str(name), list(names))
        raise ConfigError(
            f"method.name={name!r} is not valid{hint}; choose one of {', '.join(names)}"
        )
    defaults = DataConfig()
    data = types.SimpleNamespace(
        meta_source=_final(plain, "data.meta_source", defaults.meta_source),
        pseudo_meta_scorer=_final(plain, "data.pseudo_meta_scorer", defaults.pseudo_meta_scorer),
    )
    read = groups_read(str(name), data)
    for layer, strict in layers:
        _keep_read_groups(layer.get("method"), read, str(name), strict, flat)
    return OmegaConf.merge(_schema(read), *(OmegaConf.create(layer) for layer in plain))


def _plain(node: Any) -> dict[str, Any]:
    """A config layer as plain containers, its method keys in the grouped layout."""
    layer = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    layer = dict(layer)
    if "method" in layer:
        layer["method"] = _upgrade_method(layer["method"])
    return layer


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as plain containers (a checkpoint's), in the grouped layout
    whatever layout it was saved in, with only the groups its method reads."""
    layer = _plain(saved)
    try:
        return OmegaConf.to_container(_resolve([(layer, False)]), resolve=True)  # type: ignore[return-value]
    except (ConfigError, OmegaConfBaseException):
        return layer


_CHOOSING = ("method.name", "data.meta_source", "data.pseudo_meta_scorer")
"""The keys that decide which option groups a method reads."""


def _choosing_keys(overrides: Sequence[str]) -> dict[str, Any]:
    """The :data:`_CHOOSING` keys of ``overrides`` as a nested mapping. Parsing the whole
    list with OmegaConf costs milliseconds, and the suite asks this of every cell of its
    grid many times; only where a whole ``method``/``data`` mapping is given is the full
    parse needed."""
    if any(o.split("=", 1)[0] in ("method", "data") for o in overrides):
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)  # type: ignore[return-value]
    chosen = [o for o in overrides if o.split("=", 1)[0] in _CHOOSING]
    return OmegaConf.to_container(OmegaConf.from_dotlist(chosen), resolve=False)  # type: ignore[return-value]


def read_overrides(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """``overrides`` without the keys of option groups that the method they choose
    (``method.name=...``, default mwnet) does not read: for lists of overrides shared by
    runs of several methods (the suite's grid), applied like a preset."""
    given = _choosing_keys(overrides)
    name = _final([given], "method.name", MethodConfig.name)
    defaults = DataConfig()
    data = types.SimpleNamespace(
        meta_source=_final([given], "data.meta_source", defaults.meta_source),
        pseudo_meta_scorer=_final([given], "data.pseudo_meta_scorer", defaults.pseudo_meta_scorer),
    )
    read = groups_read(str(name), data)
    unread = set(all_groups()) - set(read)
    return tuple(
        o
        for o in overrides
        if o.split("=", 1)[0].split(".")[:2] not in [["method", g] for g in unread]
    )


def check_groups_read(overrides: list[str] | tuple[str, ...], names: list[str], data: Any) -> None:
    """Every option group ``overrides`` set is read by one of the methods ``names`` (runs
    of several methods sharing overrides, each reading its own groups).

    Raises:
        ConfigError: naming the key and the methods that read it.
    """
    given = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)
    method = _upgrade_method(given.get("method")) if isinstance(given, dict) else None
    if not isinstance(method, dict):
        return
    read = {g for n in names for g in groups_read(n, data)}
    for group in method:
        if group in all_groups() and group not in read:
            raise ConfigError(
                f"method.{group} is read by {_group_readers(group)}, and none of "
                f"{', '.join(names)} reads it; drop it or add one of those methods"
            )


def load_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Path | None = None,
    defaults: list[str] | tuple[str, ...] = (),
) -> Any:
    """Resolve a preset plus ``key=value`` overrides into a validated :class:`TrainConfig`.

    ``base`` starts from a saved config instead (another run's ``config.yaml``), without
    its ``name``, so that the new run gets a directory of its own. ``defaults`` are
    ``key=value`` overrides applied like a preset, before ``overrides``: keys of option
    groups the chosen method does not read are dropped (a recipe's, or those shared by
    the runs of several methods). An override in the flat
    layout of earlier versions (``method.normalize=mean``) is applied as its grouped key
    (``method.mwnet.normalize``), with a one-line note on stderr.
    """
    bad = [o for o in (*defaults, *overrides) if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad[0]!r}")
    try:
        layers: list[tuple[dict[str, Any], bool]] = []
        if base is not None:
            if not Path(base).is_file():
                raise ConfigError(f"--config {base}: no such file")
            try:
                saved = OmegaConf.load(base)
            except Exception as err:  # YAML syntax errors are not OmegaConf's
                raise ConfigError(f"--config {base}: not a readable YAML config ({err})") from None
            if not isinstance(saved, DictConfig):
                raise ConfigError(f"--config {base}: expected a mapping of config keys")
            saved.pop("name", None)
            layers.append((_plain(saved), False))
        if preset is not None:
            layers.append((_plain(_read_preset(preset)), False))
            layers.append(({"preset": preset}, False))
        flat: list[str] = []
        for dotlist, strict in ((defaults, False), (overrides, True)):
            given = OmegaConf.to_container(OmegaConf.from_dotlist(list(dotlist)), resolve=False)
            if isinstance(given, dict) and isinstance(given.get("method"), dict):
                given["method"] = _upgrade_method(given["method"], flat)
            layers.append((given, strict))  # type: ignore[arg-type]
        cfg = _resolve(layers, tuple(flat))
    except OmegaConfBaseException as err:
        raise _explain(err, (*defaults, *overrides)) from None
    for key in dict.fromkeys(flat):
        now = " or ".join(f"method.{t}" for t in FLAT_KEYS[key] if t.split(".")[0] in cfg.method)
        print(
            f"mwnet: note: method.{key} is the old name of {now}; the flat method keys "
            "will go in a later version",
            file=sys.stderr,
        )
    validate(cfg)
    return cfg


def load_config_file(path: Path) -> Any:
    """A resolved config saved in a run directory (in the flat method layout of earlier
    versions too).

    Raises:
        ConfigError: the file cannot be read, is not YAML, or is not a valid config (the
            file, the line where YAML gave up, or the bad key is named).
    """
    try:
        saved = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}; fix the file or restore it"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(saved, DictConfig):
        raise ConfigError(f"{path} holds a YAML {type(saved).__name__}, not a config mapping")
    try:
        cfg = _resolve([(_plain(saved), False)])
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_explain(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    validate(cfg)
    return cfg


def _did_you_mean(word: str, options: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest option, by spelling or by the last part
    of a dotted key (``lr`` -> ``optim.lr``), or ``""``."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        tail = word.rsplit(".", 1)[-1]
        tails = {o.rsplit(".", 1)[-1]: o for o in reversed(options) if "." in o}
        near = difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.75)
        close = [tails[near[0]]] if near else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _explain(err: OmegaConfBaseException, overrides: Any = ()) -> ConfigError:
    """One line for an error of OmegaConf's: an unknown key with the valid keys near it,
    or a value of the wrong type with the type expected (``overrides``: the ``key=value``
    strings given, to quote a bad value as it was typed)."""
    key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0]
    if msg.startswith("Key '") and "not in" in msg:
        keys = valid_keys()
        hint = _did_you_mean(key, keys)
        return ConfigError(f"unknown config key {key!r}{hint}; {_keys_near(key, keys)}")
    expected = _expected(key) if key else None
    if expected is None:
        return ConfigError(f"bad value for {key!r}: {msg}")
    typed = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key.split("[")[0]]
    found = re.search(r"(?:Value|value|string:) '(.*?)'(?= of type| is not| for field|$)", msg)
    if typed:
        given = f"{key.split('[')[0]}={typed[-1] or '(empty)'}"
    elif found is not None:
        given = f"{key}={'(empty)' if found.group(1) == 'None' else found.group(1)}"
    else:
        given = key
    example = _example(key)
    return ConfigError(
        f"{given} is not valid: expected {expected}"
        + (f", e.g. {key.split('[')[0]}={example}" if example else "")
    )


def _keys_near(key: str, keys: list[str]) -> str:
    """The valid keys of the group ``key`` names (``optim.epoch``: optim's), or the
    top-level keys and groups."""
    group = key.split(".", 1)[0] if "." in key else ""
    mine = [k.split(".", 1)[1] for k in keys if "." in k and k.split(".", 1)[0] == group]
    if mine:
        return f"valid keys of {group}: {', '.join(mine)}"
    top = [k for k in keys if "." not in k]
    groups = list(dict.fromkeys(k.split(".", 1)[0] + ".*" for k in keys if "." in k))
    return f"valid keys: {', '.join(top)}, and the groups {', '.join(groups)}"


def _field_type(key: str) -> tuple[Any, Any] | None:
    """The schema's type of the dotted ``key`` (``optim.milestones[0]``: the list's), and
    its default; None for a key the schema does not declare."""
    node: Any = TrainConfig
    path = key.split("[")[0]
    hint: Any = None
    default: Any = None
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        found = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if found is None and node is MethodConfig and part in all_groups():
            hint, default, node = all_groups()[part], None, all_groups()[part]
            continue
        if found is None:
            return None
        hint = typing.get_type_hints(node)[part]
        default = found.default if found.default is not dataclasses.MISSING else None
        if found.default_factory is not dataclasses.MISSING:
            default = found.default_factory()
        node = hint
    return hint, default


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _in_words(hint: Any) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        words = _in_words(others[0]) if len(others) == 1 else None
        return None if words is None else f"{words} or null"
    if origin is list:
        item = _in_words(args[0]) if args else None
        return f"a list of {item.removeprefix('an ').removeprefix('a ')}s" if item else "a list"
    if origin is dict or hint is dict:
        return "a mapping like {key: value}"
    return _TYPE_WORDS.get(hint)


def _expected(key: str) -> str | None:
    """What the schema expects at ``key``, in words (``a number``)."""
    declared = _field_type(key)
    return None if declared is None else _in_words(declared[0])


def _example(key: str) -> str | None:
    """The schema's default of ``key`` as it is written on the command line."""
    declared = _field_type(key)
    if declared is None or declared[1] is None or declared[1] == "" or declared[1] == {}:
        return None
    default = declared[1]
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""What ``device`` may name (whether it exists here is checked when the run starts)."""


def _non_finite_floats(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of float values that are NaN or infinite (OmegaConf accepts both)."""
    bad = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            bad += _non_finite_floats(value, dotted + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{dotted}={value}")
    return bad


INT_RANGE = (-(2**63), 2**63 - 1)
"""What an integer config value may be: torch and numpy take int64 (a larger seed, size
or count fails deep inside them, naming no key)."""


def _integers(node: Any, prefix: str = "") -> list[tuple[str, int]]:
    """Every integer value (in lists and model.options too), with its dotted key."""
    found = []
    items = enumerate(node) if isinstance(node, ListConfig) else ((k, None) for k in node)
    for key, item in items:
        if isinstance(node, ListConfig):
            dotted, value = f"{prefix.rstrip('.')}[{key}]", item
        else:
            dotted = f"{prefix}{key}"
            value = node[key] if not OmegaConf.is_missing(node, key) else None
        if isinstance(value, DictConfig | ListConfig):
            found += _integers(value, dotted + ".")
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append((dotted, value))
    return found


def _check_integer_ranges(cfg: Any) -> None:
    """Integers that no library takes, before any data is read, naming the key."""
    low, high = INT_RANGE
    for key, value in _integers(cfg):
        if not low <= value <= high:
            raise ConfigError(
                f"{key}={value} is out of range: integers must lie in [-2**63, 2**63 - 1]"
            )
    if cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed}")
    if cfg.threads is not None and cfg.threads > 2**31 - 1:
        raise ConfigError(f"threads={cfg.threads} is out of range: at most 2**31 - 1")
    if cfg.optim.gamma <= 0:
        raise ConfigError(
            f"optim.gamma={cfg.optim.gamma} must be > 0: each milestone multiplies the "
            "learning rate by it (0.1: a tenth)"
        )
    teacher = cfg.method.get(TEACHER)
    freeze = None if teacher is None else teacher.freeze_epoch
    if freeze is not None and freeze < 0:
        raise ConfigError(f"method.teacher.freeze_epoch={freeze} must be >= 0 (null: never frozen)")


def check_run_name(name: Any, key: str = "name") -> None:
    """A run's name must be one directory name: ``out_dir/name`` is where the run is
    written, and a name with a separator, ``..`` or an absolute path would put it (and
    everything later runs find by that name) somewhere other than under ``out_dir``."""
    text = str(name)
    separators = [sep for sep in ("/", "\\", os.sep, os.altsep) if sep and sep in text]
    if not text.strip() or text in (".", "..") or separators or "\0" in text:
        raise ConfigError(
            f"{key}={text!r} is not a single directory name; the run is written to "
            "out_dir/<name>, so give a name without '/', '\\' or '..' (to write elsewhere, "
            "set out_dir=DIR; for the default name, leave it out)"
        )


def validate(cfg: Any) -> None:
    """Check the values OmegaConf's types cannot: choices, ranges, consistency."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            hint = _did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{key}={value!r} is not valid{hint}; choose one of {', '.join(choices)}"
            )
    non_finite = _non_finite_floats(cfg)
    if non_finite:
        raise ConfigError(f"{non_finite[0]} is not a finite number; give a finite value")
    _check_integer_ranges(cfg)
    if not DEVICE_PATTERN.fullmatch(str(cfg.device)):
        raise ConfigError(
            f"device={cfg.device!r} is not a device mwnet can train on; use auto, cpu, cuda, "
            "cuda:N (a GPU index) or mps"
        )
    if cfg.name is not None:
        check_run_name(cfg.name)
    d, o, m = cfg.data, cfg.optim, cfg.method
    try:
        method = method_descriptor(str(m.name))
    except ValueError:
        names = method_names()
        hint = _did_you_mean(str(m.name), list(names))
        raise ConfigError(
            f"method.name={m.name!r} is not valid{hint}; choose one of {', '.join(names)}"
        ) from None
    checks = [
        (
            cfg.threads is None or cfg.threads >= 1,
            f"threads={cfg.threads} must be >= 1 (or null for torch's default)",
        ),
        (d.eval_batch_size >= 1, "data.eval_batch_size must be >= 1"),
        (d.image_size >= 1 and d.padding >= 0, "data.image_size must be >= 1, data.padding >= 0"),
        (0.0 <= d.noise_rate <= 1.0, "data.noise_rate must lie in [0, 1]"),
        (d.imbalance_factor >= 1.0, "data.imbalance_factor must be >= 1 (1 means balanced)"),
        (d.batch_size >= 1 and d.meta_batch_size >= 1, "batch sizes must be >= 1"),
        (d.subset is None or d.subset >= 1, "data.subset must be >= 1 or null"),
        (d.val_size >= 0, "data.val_size must be >= 0 (0: no validation split)"),
        (d.meta_per_class is None or d.meta_per_class >= 1, "data.meta_per_class must be >= 1"),
        (
            o.epochs >= 1 or (o.epochs == 0 and method.trains_on_meta and cfg.model.init_from),
            "optim.epochs must be >= 1 (0 only for method.name=finetune with model.init_from: "
            "fine-tuning another run's model without training it further first)",
        ),
        (
            all(m >= 1 for m in o.milestones),
            f"optim.milestones={list(o.milestones)}: milestones are epochs, each >= 1",
        ),
        (o.lr > 0, "optim.lr must be > 0"),
        (m.warmup_epochs >= 0, "method.warmup_epochs must be >= 0"),
        (d.pseudo_meta_per_class >= 1, "data.pseudo_meta_per_class must be >= 1"),
        (
            d.meta_source == "clean" or not method.trains_on_meta,
            f"method.name={m.name} fine-tunes on a clean set, and data.meta_source=auto has "
            "none; use data.meta_source=clean (or another method)",
        ),
        (
            d.meta_source == "clean" or d.dataset != "list" or not d.meta_list,
            "data.meta_list gives a clean set, but data.meta_source=auto uses none; drop one",
        ),
        (cfg.distributed.timeout > 0, "distributed.timeout must be > 0 seconds"),
        (
            not m.compile or method.compiles,
            "method.compile=true is supported by "
            f"{', '.join(n for n in method_names() if method_descriptor(n).compiles)}, "
            f"not {m.name}",
        ),
        (d.noise != "matrix" or d.noise_matrix, "data.noise=matrix needs data.noise_matrix=PATH"),
        (d.dataset != "list" or d.train_list, "data.dataset=list needs data.train_list=PATH"),
        (d.dataset != "table" or d.table.path, "data.dataset=table needs data.table.path=FILE"),
        (
            0.0 < d.table.test_fraction < 1.0,
            "data.table.test_fraction must lie strictly between 0 and 1",
        ),
        (
            d.dataset != "table" or d.normalize != "imagenet",
            "data.normalize=imagenet holds image constants; a table is standardised with "
            "data.normalize=auto (its own statistics) or used as it is with none",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if d.noise == "none" and d.noise_rate > 0:
        raise ConfigError("data.noise_rate > 0 needs a noise type (data.noise=uniform, flip2, ...)")
    _check_method_options(cfg)
    check_sync_bn_method(cfg)


def _check_method_options(cfg: Any) -> None:
    """The option groups' values that their types cannot check, and how they combine.

    Each group of the chosen method is first built as its dataclass, so that the checks an
    options class makes of itself (``__post_init__``) refuse a bad value here, before any
    data is read, rather than when the method is built."""
    m = cfg.method
    for group in method_descriptor(m.name).options:
        if m.get(group) is not None:
            try:
                _options(m[group])
            except ValueError as err:
                raise ConfigError(str(err)) from None
    w, teacher = m.get("mwnet"), m.get(TEACHER)
    checks = []
    if teacher is not None:
        checks.append((0.0 <= teacher.decay <= 1.0, "method.teacher.decay must lie in [0, 1]"))
    if m.get("cmwnet") is not None:
        checks.append((m.cmwnet.clusters >= 1, "method.cmwnet.clusters must be >= 1"))
    for group in ("glc", "s_model"):
        phases = m.get(group)
        if phases is not None:
            e = phases.estimate_epochs
            checks.append(
                (
                    e is None or e >= 0,
                    f"method.{group}.estimate_epochs must be >= 0 (0 or null: optim.epochs)",
                )
            )
    if m.get("glc") is not None:
        checks += [
            (m.glc.trusted_weight > 0, "method.glc.trusted_weight must be > 0"),
            (
                cfg.data.meta_source == "clean",
                "method.glc estimates the label corruption on a trusted set, and "
                "data.meta_source=auto has none; use data.meta_source=clean",
            ),
        ]
    if m.get("s_model") is not None:
        checks.append((m.s_model.lr_factor > 0, "method.s_model.lr_factor must be > 0"))
    if m.get("mentornet_dd") is not None:
        checks.append(
            (
                cfg.data.meta_source == "clean",
                "method.mentornet_dd fits its mentor on a trusted set with known clean "
                "labels, and data.meta_source=auto has none; use data.meta_source=clean",
            )
        )
    if w is not None:
        try:
            mode = _options(w).hypergradient(prefix="method.mwnet.")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        scheduled = bool(w.meta_interval_schedule) or (
            w.freeze_epoch is not None or w.freeze_tolerance is not None
        )
        mixup = m.get("label_correction") is not None and m.label_correction.mixup
        checks += [
            (w.meta_interval >= 1, "method.mwnet.meta_interval must be >= 1"),
            (
                not scheduled or w.meta,
                "method.mwnet.meta_interval_schedule and method.mwnet.freeze_* schedule the "
                "updates of a weighting net that learns (method.mwnet.meta=true)",
            ),
            (
                w.freeze_epoch is None or w.freeze_epoch >= 1,
                "method.mwnet.freeze_epoch must be >= 1 (the net learns for that many "
                "epochs); to never learn it, use method.mwnet.meta=false with "
                "method.mwnet.net_from",
            ),
            (
                w.freeze_tolerance is None or w.freeze_tolerance > 0,
                "method.mwnet.freeze_tolerance must be > 0",
            ),
            (
                w.meta or w.net_from,
                "method.mwnet.meta=false trains with a frozen weighting net, which must come "
                "from another run: set method.mwnet.net_from=RUN_DIR (or its weight_net.pt)",
            ),
            (
                w.net_init == "default" or not w.net_from,
                f"method.mwnet.net_init={w.net_init} initialises a fresh weighting net, but "
                "method.mwnet.net_from starts from a learned one; drop one of them",
            ),
            (
                not m.compile or mode.compiles,
                f"method.compile=true with {m.name} needs method.mwnet.hypergrad=fast "
                "(compiled graphs have no double backward for reverse and no forward hooks "
                "for head and partial; famus runs eagerly)",
            ),
            (
                not mixup or w.normalize == "mean",
                "method.label_correction.mixup=true is label correction on mixed batches: it "
                "needs method.mwnet.normalize=mean",
            ),
            (
                not mixup or all(n in ("loss", "class") for n in w.inputs),
                "method.label_correction.mixup=true gives each mixed input two terms, one per "
                "label, and the other inputs describe one sample each: method.mwnet.inputs "
                "may then hold loss and class only",
            ),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for group in method_descriptor(str(m.name)).options:  # groups that check themselves
        node = m.get(group)
        problem = None if node is None else getattr(_options(node), "problem", None)
        message = problem(f"method.{group}.") if callable(problem) else None
        if message is not None:
            raise ConfigError(message)
    if w is not None:
        try:
            parse_interval_schedule(w.meta_interval_schedule)
        except ValueError as err:
            raise ConfigError(f"method.mwnet.{err}") from None


def _options(node: Any) -> Any:
    """An option group of the config as its dataclass (to ask it, e.g. for its
    hypergradient mode)."""
    return OmegaConf.to_object(node)


def check_sync_bn_method(cfg: Any) -> None:
    """torch's SyncBatchNorm has neither a forward-mode derivative (``fast``) nor a
    second-order one (``reverse``), which the exact meta gradients differentiate through."""
    if not cfg.distributed.sync_bn:
        return
    m = cfg.method
    for group in method_descriptor(str(m.name)).options:
        options = _options(m[group])
        if not hasattr(options, "hypergradient") or not getattr(options, "meta", True):
            continue  # a frozen weighting net has no meta gradient
        mode = options.hypergradient()
        if not mode.sync_bn:
            raise ConfigError(
                f"distributed.sync_bn=true cannot be used with method.name={m.name} with "
                f"method.{group}.hypergrad={mode.name}: that meta gradient differentiates "
                "through BatchNorm in forward mode (fast) or twice (reverse), which "
                "torch.nn.SyncBatchNorm does not support. Use method.mwnet.hypergrad=head "
                "(mwnet), a plain method, or drop distributed.sync_bn (each rank normalises "
                "its own shard)"
            )


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def preset_description(name: str) -> str:
    return str(_read_preset(name).get("description", ""))
