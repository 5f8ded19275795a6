"""The training configuration: typed schemas, presets and ``key=value`` overrides.

OmegaConf structured configs give typed fields and reject unknown keys; this module adds
what OmegaConf cannot know: which string values are valid, and error messages that list
the valid keys or values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mwnet.core.weight_net import WEIGHT_INITS
from mwnet.methods.meta_schedule import parse_interval_schedule
from mwnet.methods.registry import COMPILABLE, METHODS
from mwnet.methods.registry import LABEL_CORRECTION_METHODS as LABEL_CORRECTION
from mwnet.methods.registry import WEIGHTING_METHODS as WEIGHTING

META_READERS: tuple[str, ...] = ("l2rw", "finetune", *WEIGHTING)
"""Methods that read the meta set."""


class ConfigError(ValueError):
    """A preset, override or value that cannot be used, with the valid choices."""


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    """fashion-mnist | mnist | cifar10 | cifar100 | folder | list"""
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
    """auto (CIFAR constants for CIFAR, training-set statistics otherwise) | imagenet | none"""
    augment: bool = True
    padding: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    batch_size: int = 100
    meta_batch_size: int = 100
    eval_batch_size: int = 500


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
class MethodConfig:
    name: str = "mwnet"
    hypergrad: str = "fast"
    head: str | None = None
    """hypergrad=head only: module name of the final nn.Linear; None: detected"""
    partial: str | None = None
    """hypergrad=partial only: the top that takes the virtual step, a comma list of module
    or parameter names (e.g. stage3,fc); None: the model's last stage and classifier"""
    normalize: str = "sum"
    virtual_step: str = "sgd"
    meta_interval: int = 1
    meta_interval_schedule: str | None = None
    """mwnet/cmwnet: "K@E,K@E": a weighting-net update every K-th step from epoch E on (E
    epochs done); before the first E, meta_interval (e.g. "5@2,20@10")"""
    weight_net_freeze_epoch: int | None = None
    """mwnet/cmwnet: freeze the weighting net from this epoch on (no more meta steps)"""
    weight_net_freeze_tolerance: float | None = None
    """mwnet/cmwnet: freeze it from the first epoch at whose start its curve moved by less
    than this since the previous epoch's start (largest weight change on losses 0..10)"""
    low_memory: bool = False
    """hypergrad=fast only: free the training graph before the meta pass and run the forward
    again for the real update (same result, about a plain step's peak memory)"""
    compile: bool = False
    """torch.compile the model's passes: ce, focal, class-balanced, and mwnet with
    hypergrad=fast (see docs/PERFORMANCE.md for what it gains)"""
    weight_hidden: int = 100
    weight_depth: int = 1
    weight_init: str = "default"
    """mwnet/cmwnet: how a fresh weighting net starts: default (PyTorch's initialisation,
    the paper's) | flat (output layer zeroed: every weight 0.5 at the start, so the first
    virtual step is plain cross-entropy's, whatever the seed)"""
    weight_optimizer: str = "adam"
    weight_lr: float = 1e-3
    weight_momentum: float = 0.9
    weight_nesterov: bool = True
    weight_decay: float = 1e-4
    weight_clusters: int = 3
    """cmwnet: class clusters by training-set size (k-means on the per-class counts), one
    weighting curve each; fewer if fewer distinct counts"""
    warmup_epochs: int = 0
    """mwnet/cmwnet: plain cross-entropy for this many first epochs"""
    mixup: bool = False
    """mwnet-sl/cmwnet-sl: train on mixup batches as the CMW-Net-SL authors do (two labels
    and two weights per mixed input); needs method.normalize=mean"""
    teacher_decay: float = 0.997
    """The EMA teacher (label correction, and the pseudo-meta scorer):
    θ_teacher <- d θ_teacher + (1 - d) θ after every step"""
    teacher_freeze_epoch: int | None = None
    """Stop moving the teacher from this epoch on (CMW-Net-SL, asymmetric noise: 150)"""
    weight_net_from: str | None = None
    """mwnet/cmwnet: start from the weight_net.pt of another run (a file or run directory)"""
    meta: bool = True
    """mwnet/cmwnet: false keeps the weighting net of weight_net_from frozen: no meta step,
    the meta set is never read, a step costs about a plain step"""
    focal_gamma: float = 1.0
    cb_beta: float = 0.9999
    cb_loss: str = "ce"
    finetune_epochs: int = 10
    finetune_lr: float = 1e-3


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
    "data.dataset": ("fashion-mnist", "mnist", "cifar10", "cifar100", "folder", "list"),
    "data.noise": (
        "none",
        "uniform",
        "uniform-exclusive",
        "flip2",
        "pair",
        "asymmetric-cifar10",
        "asymmetric-cifar100",
        "asymmetric-fashion-mnist",
        "matrix",
    ),
    "data.imbalance_profile": ("exp", "step"),
    "data.meta_source": ("clean", "auto"),
    "data.pseudo_meta_scorer": ("teacher", "model"),
    "data.normalize": ("auto", "imagenet", "none"),
    "data.pad_mode": ("reflect", "zero"),
    "optim.schedule": ("multistep", "cosine", "constant"),
    "method.name": METHODS,
    "method.hypergrad": ("fast", "reverse", "head", "partial"),
    "method.normalize": ("sum", "sum-detached", "mean", "none"),
    "method.virtual_step": ("sgd", "optimizer"),
    "method.weight_optimizer": ("adam", "sgd"),
    "method.weight_init": WEIGHT_INITS,
    "method.cb_loss": ("ce", "focal"),
    "amp": ("none", "bf16", "fp16"),
    "distributed.backend": ("auto", "nccl", "gloo"),
}


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
    """Every settable dotted key, for error messages and documentation."""
    node = OmegaConf.structured(TrainConfig) if node is None else node
    keys = []
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else None
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig) and key != "options":
            keys.extend(valid_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def load_config(
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Path | None = None,
) -> Any:
    """Resolve a preset plus ``key=value`` overrides into a validated :class:`TrainConfig`.

    ``base`` starts from a saved config instead (another run's ``config.yaml``), without
    its ``name``, so that the new run gets a directory of its own.
    """
    schema = OmegaConf.structured(TrainConfig)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad[0]!r}")
    try:
        layers = [schema]
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
            layers.append(saved)
        if preset is not None:
            layers.append(_read_preset(preset))
            layers.append(OmegaConf.create({"preset": preset}))
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise _explain(err, overrides) from None
    validate(cfg)
    return cfg


def load_config_file(path: Path) -> Any:
    """A resolved config saved in a run directory.

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
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_explain(err)}") from None
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
    freeze = cfg.method.teacher_freeze_epoch
    if freeze is not None and freeze < 0:
        raise ConfigError(f"method.teacher_freeze_epoch={freeze} must be >= 0 (null: never frozen)")


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
            o.epochs >= 1 or (o.epochs == 0 and m.name == "finetune" and cfg.model.init_from),
            "optim.epochs must be >= 1 (0 only for method.name=finetune with model.init_from: "
            "fine-tuning another run's model without training it further first)",
        ),
        (
            all(m >= 1 for m in o.milestones),
            f"optim.milestones={list(o.milestones)}: milestones are epochs, each >= 1",
        ),
        (o.lr > 0, "optim.lr must be > 0"),
        (m.meta_interval >= 1, "method.meta_interval must be >= 1"),
        (
            m.partial is None or (m.name in WEIGHTING and m.hypergrad == "partial"),
            "method.partial names the top of hypergrad=partial; set method.hypergrad=partial "
            "(mwnet, cmwnet) or drop method.partial",
        ),
        (
            not _updates_scheduled(m) or (m.name in WEIGHTING and m.meta),
            "method.meta_interval_schedule and method.weight_net_freeze_* schedule the "
            "weighting-net updates of mwnet and cmwnet learning their net (method.meta=true)",
        ),
        (
            m.weight_net_freeze_epoch is None or m.weight_net_freeze_epoch >= 1,
            "method.weight_net_freeze_epoch must be >= 1 (the net learns for that many "
            "epochs); to never learn it, use method.meta=false with method.weight_net_from",
        ),
        (
            m.weight_net_freeze_tolerance is None or m.weight_net_freeze_tolerance > 0,
            "method.weight_net_freeze_tolerance must be > 0",
        ),
        (m.weight_clusters >= 1, "method.weight_clusters must be >= 1"),
        (m.warmup_epochs >= 0, "method.warmup_epochs must be >= 0"),
        (d.pseudo_meta_per_class >= 1, "data.pseudo_meta_per_class must be >= 1"),
        (0.0 <= m.teacher_decay <= 1.0, "method.teacher_decay must lie in [0, 1]"),
        (
            not m.mixup or (m.name in LABEL_CORRECTION and m.normalize == "mean"),
            "method.mixup=true is label correction on mixed batches: it needs method.name="
            "mwnet-sl or cmwnet-sl and method.normalize=mean",
        ),
        (
            d.meta_source == "clean" or m.name != "finetune",
            "method.name=finetune fine-tunes on a clean set, and data.meta_source=auto has "
            "none; use data.meta_source=clean (or another method)",
        ),
        (
            d.meta_source == "clean" or d.dataset != "list" or not d.meta_list,
            "data.meta_list gives a clean set, but data.meta_source=auto uses none; drop one",
        ),
        (
            m.meta or m.weight_net_from,
            "method.meta=false trains with a frozen weighting net, which must come from "
            "another run: set method.weight_net_from=RUN_DIR (or its weight_net.pt)",
        ),
        (
            (m.meta and not m.weight_net_from) or m.name in WEIGHTING,
            f"method.weight_net_from and method.meta=false are for mwnet and cmwnet, not {m.name}",
        ),
        (
            m.weight_init == "default" or not m.weight_net_from,
            f"method.weight_init={m.weight_init} initialises a fresh weighting net, but "
            "method.weight_net_from starts from a learned one; drop one of them",
        ),
        (cfg.distributed.timeout > 0, "distributed.timeout must be > 0 seconds"),
        (
            not (m.low_memory and m.name in WEIGHTING and m.hypergrad != "fast"),
            "method.low_memory=true needs method.hypergrad=fast (reverse must keep the "
            "training graph, head keeps only one already, partial keeps the bottom's "
            "activations)",
        ),
        (
            not m.compile or m.name in COMPILABLE,
            f"method.compile=true is supported by {', '.join(COMPILABLE)}, not {m.name}",
        ),
        (
            not (m.compile and m.name in WEIGHTING and m.hypergrad != "fast"),
            f"method.compile=true with {m.name} needs method.hypergrad=fast (compiled graphs have "
            "no double backward for reverse and no forward hooks for head and partial)",
        ),
        (d.noise != "matrix" or d.noise_matrix, "data.noise=matrix needs data.noise_matrix=PATH"),
        (d.dataset != "list" or d.train_list, "data.dataset=list needs data.train_list=PATH"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if d.noise == "none" and d.noise_rate > 0:
        raise ConfigError("data.noise_rate > 0 needs a noise type (data.noise=uniform, flip2, ...)")
    try:
        parse_interval_schedule(m.meta_interval_schedule)
    except ValueError as err:
        raise ConfigError(f"method.{err}") from None
    check_sync_bn_method(cfg)


def _updates_scheduled(m: Any) -> bool:
    return bool(m.meta_interval_schedule) or (
        m.weight_net_freeze_epoch is not None or m.weight_net_freeze_tolerance is not None
    )


def check_sync_bn_method(cfg: Any) -> None:
    """torch's SyncBatchNorm has neither a forward-mode derivative (``fast``) nor a
    second-order one (``reverse``), which the exact meta gradients differentiate through."""
    m = cfg.method
    if not cfg.distributed.sync_bn:
        return
    if not m.meta:  # a frozen weighting net has no meta gradient
        return
    if m.name == "l2rw" or (m.name in WEIGHTING and m.hypergrad != "head"):
        mode = f"method.name={m.name} with method.hypergrad={m.hypergrad}"
        raise ConfigError(
            f"distributed.sync_bn=true cannot be used with {mode}: that meta gradient "
            "differentiates through BatchNorm in forward mode (fast) or twice (reverse), which "
            "torch.nn.SyncBatchNorm does not support. Use method.hypergrad=head (mwnet), a "
            "plain method, or drop distributed.sync_bn (each rank normalises its own shard)"
        )


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def preset_description(name: str) -> str:
    return str(_read_preset(name).get("description", ""))
