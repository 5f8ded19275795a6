"""Methods by name: one descriptor each, registered once (see :mod:`mwnet.methods.descriptor`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from mwnet.core import ClassAwareWeightNet
from mwnet.core.reducer import GradientReducer
from mwnet.core.weight_inputs import per_sample
from mwnet.methods.base import Method
from mwnet.methods.bootstrap import (
    BootstrapHard,
    BootstrapHardOptions,
    BootstrapSoft,
    BootstrapSoftOptions,
)
from mwnet.methods.ce import CrossEntropy
from mwnet.methods.class_balanced import ClassBalanced, ClassBalancedOptions
from mwnet.methods.co_teaching import CoTeaching, CoTeachingOptions, peer_optimizer_like
from mwnet.methods.d2l import D2L, D2LOptions
from mwnet.methods.descriptor import (
    Knob,
    MethodContext,
    MethodDescriptor,
    SamplePass,
    TrainingViews,
)
from mwnet.methods.dividemix import DivideMix, DivideMixOptions
from mwnet.methods.elr import ELR, ELROptions
from mwnet.methods.finetune import Finetune, FinetuneOptions
from mwnet.methods.flat_keys import FLAT_KEYS
from mwnet.methods.focal import Focal, FocalOptions
from mwnet.methods.gce import GceOptions, GeneralizedCrossEntropy
from mwnet.methods.glc import GlcOptions, GoldLossCorrection
from mwnet.methods.l2rw import L2RW, L2RWOptions
from mwnet.methods.mentornet import MentorNetOptions, MentorNetPD
from mwnet.methods.mentornet_dd import MentorNetDD, MentorNetDDOptions
from mwnet.methods.meta_weight_net import (
    ClassAwareOptions,
    LabelCorrectionOptions,
    MetaWeightNet,
    WeightingOptions,
)
from mwnet.methods.mlc import MetaLabelCorrection, MlcOptions
from mwnet.methods.s_model import SModel, SModelOptions
from mwnet.methods.sce import SceOptions, SymmetricCrossEntropy
from mwnet.methods.self_paced import SelfPaced, SelfPacedOptions

_REGISTRY: dict[str, MethodDescriptor] = {}


def register_method(descriptor: MethodDescriptor, *, replace: bool = False) -> MethodDescriptor:
    """Make ``descriptor`` a method of ``mwnet train``, ``compare`` and the suite.

    Raises:
        ValueError: the name is taken (unless ``replace``), or an option group it shares
            with another method has another dataclass there.
    """
    if descriptor.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {descriptor.name!r} is registered already")
    groups = option_groups()
    for group, kind in descriptor.options.items():
        if group in _RESERVED:
            raise ValueError(f"method {descriptor.name!r}: option group {group!r} is reserved")
        if groups.get(group, kind) is not kind:
            raise ValueError(
                f"method {descriptor.name!r}: option group {group!r} is {groups[group]!r} "
                f"elsewhere, not {kind!r}; give it another name"
            )
    _REGISTRY[descriptor.name] = descriptor
    return descriptor


def unregister_method(name: str) -> None:
    """Forget a registered method (for tests and plugins that clean up)."""
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY)


def method_descriptor(name: str) -> MethodDescriptor:
    """The descriptor of ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def option_groups() -> dict[str, type]:
    """Every option group of the registered methods, ``{group: dataclass}``."""
    groups: dict[str, type] = {}
    for descriptor in _REGISTRY.values():
        groups.update(descriptor.options)
    return groups


def readers(group: str) -> tuple[str, ...]:
    """The registered methods that read the option group ``group``."""
    return tuple(n for n, d in _REGISTRY.items() if group in d.options)


_RESERVED = ("name", "compile", "warmup_epochs", "teacher")
"""Keys of ``method`` that are not option groups of one method."""


def _ce(ctx: MethodContext) -> Method:
    return CrossEntropy(ctx.compiled_model(), ctx.optimizer, **ctx.common())


def _focal(ctx: MethodContext) -> Method:
    o = ctx.options["focal"]
    return Focal(ctx.compiled_model(), ctx.optimizer, gamma=o.gamma, **ctx.common())


def _class_balanced(ctx: MethodContext) -> Method:
    o = ctx.options["class_balanced"]
    return ClassBalanced(
        ctx.compiled_model(),
        ctx.optimizer,
        ctx.class_counts,
        beta=o.beta,
        base_loss=o.loss,
        gamma=o.gamma,
        **ctx.common(),
    )


def _l2rw(ctx: MethodContext) -> Method:
    o = ctx.options["l2rw"]
    return L2RW(ctx.model, ctx.optimizer, ctx.meta_batches, hypergrad=o.hypergrad, **ctx.common())


def _finetune(ctx: MethodContext) -> Method:
    o = ctx.options["finetune"]
    return Finetune(
        ctx.compiled_model(),
        ctx.optimizer,
        epochs=ctx.epochs,
        finetune_epochs=o.epochs,
        finetune_lr=o.lr,
        **ctx.common(),
    )


def _loss_only(cls: type, group: str, *, epochs: bool = False) -> Callable[[MethodContext], Method]:
    """The builder of a loss-only baseline whose option group's fields are its keyword
    arguments (and, with ``epochs``, the configured number of epochs)."""

    def build(ctx: MethodContext) -> Method:
        options = dataclasses.asdict(ctx.options[group])
        if epochs:
            options["epochs"] = ctx.epochs
        return cls(ctx.compiled_model(), ctx.optimizer, **options, **ctx.common())

    return build


def _mentornet_dd(ctx: MethodContext) -> Method:
    o = ctx.options["mentornet"]
    return MentorNetDD(
        ctx.compiled_model(),
        ctx.optimizer,
        ctx.meta_set,
        epochs=ctx.epochs,
        classes=len(ctx.class_counts),
        percentile=o.percentile,
        ema_decay=o.ema_decay,
        burn_in_epochs=o.burn_in_epochs,
        options=ctx.options["mentornet_dd"],
        seed=ctx.seed,
        network=ctx.model,
        **ctx.common(),
    )


def _co_teaching(ctx: MethodContext) -> Method:
    o: CoTeachingOptions = ctx.options["co_teaching"]
    if ctx.new_network is None:
        raise ValueError(
            "co-teaching trains a second network of the model's architecture: pass "
            "new_network=(k -> a freshly initialised network) to build_method"
        )
    peer = ctx.new_network(1)
    new_optimizer = ctx.new_optimizer or peer_optimizer_like(ctx.optimizer)
    return CoTeaching(
        ctx.model,
        ctx.optimizer,
        peer,
        new_optimizer(peer.parameters()),
        forget_rate=o.forget_rate,
        num_gradual=o.num_gradual,
        exponent=o.exponent,
        **ctx.common(),
    )


def _glc(ctx: MethodContext) -> Method:
    o: GlcOptions = ctx.options["glc"]
    return GoldLossCorrection(
        ctx.model,
        ctx.optimizer,
        ctx.meta_batches,
        ctx.meta_set,
        training_size=None if ctx.training_set is None else len(ctx.training_set),
        epochs=ctx.epochs,
        estimate_epochs=o.estimate_epochs,
        variant=o.variant,
        trusted_weight=o.trusted_weight,
        **ctx.common(),
    )


def _s_model(ctx: MethodContext) -> Method:
    o: SModelOptions = ctx.options["s_model"]
    return SModel(
        ctx.model,
        ctx.optimizer,
        ctx.training_set,
        len(ctx.class_counts),
        epochs=ctx.epochs,
        estimate_epochs=o.estimate_epochs,
        confusion=o.confusion,
        lr_factor=o.lr_factor,
        **ctx.common(),
    )


def _training_set(ctx: MethodContext, name: str, why: str) -> SamplePass:
    if ctx.training_set is None:
        raise ValueError(f"{name} {why}: build it with training_set=... (the loop passes it)")
    return ctx.training_set


def _elr(ctx: MethodContext) -> Method:
    o = ctx.options["elr"]
    samples = len(_training_set(ctx, "elr", "keeps a target per training sample"))
    return ELR(
        ctx.compiled_model(),
        ctx.optimizer,
        samples,
        len(ctx.class_counts),
        beta=o.beta,
        lam=o.lam,
        **ctx.common(),
    )


def _d2l(ctx: MethodContext) -> Method:
    if ctx.epochs is None:
        raise ValueError("d2l's schedule needs the run's epochs: pass options={'epochs': ...}")
    return D2L(
        ctx.compiled_model(),
        ctx.optimizer,
        _training_set(ctx, "d2l", "estimates dimensionality on training samples"),
        epochs=ctx.epochs,
        options=ctx.options["d2l"],
        seed=ctx.seed,
        network=ctx.model,
        **ctx.common(),
    )


def _dividemix(ctx: MethodContext) -> Method:
    return DivideMix(
        ctx.model,
        ctx.optimizer,
        options=ctx.options["dividemix"],
        peer=None if ctx.new_network is None else ctx.new_network(1),
        new_optimizer=ctx.new_optimizer,
        training_set=ctx.training_set,
        augment=ctx.augment,
        seed=ctx.seed,
        **ctx.common(),
    )


def _mlc(ctx: MethodContext) -> Method:
    return MetaLabelCorrection(
        ctx.model,
        ctx.optimizer,
        ctx.meta_batches,
        len(ctx.class_counts),
        options=ctx.options["mlc"],
        seed=ctx.seed,
        **ctx.common(),
    )


def _weighting(class_aware: bool, label_correction: bool) -> Callable[[MethodContext], Method]:
    """The builder of MW-Net (loss-only net) or CMW-Net (class-aware), with or without
    label correction."""
    name = ("cmwnet" if class_aware else "mwnet") + ("-sl" if label_correction else "")

    def build(ctx: MethodContext) -> Method:
        o: WeightingOptions = ctx.options["mwnet"]
        net = ctx.weight_net
        if net is not None and isinstance(net, ClassAwareWeightNet) != class_aware:
            kind = "loss-only (mwnet)" if class_aware else "class-aware (cmwnet)"
            raise ValueError(
                f"method {name} cannot start from a {kind} weighting net; use "
                f"method.name={'mwnet' if class_aware else 'cmwnet'} with it"
            )
        if label_correction != (ctx.soft_labels is not None):
            raise ValueError(
                "mwnet-sl, cmwnet-sl need soft_labels (a teacher) and the other methods take "
                f"none; got method {name} with soft_labels="
                f"{'set' if ctx.soft_labels is not None else 'None'}"
            )
        mode = o.hypergradient()
        inputs = tuple(o.inputs)
        samples = None
        if per_sample(inputs):
            samples = len(_training_set(ctx, name, "inputs kept per training sample"))
        return MetaWeightNet(
            ctx.model,
            ctx.optimizer,
            ctx.meta_batches,
            **mode.reweighter_options(seed=ctx.seed),
            normalize=o.normalize,
            virtual_step=o.virtual_step,
            meta_interval=o.meta_interval,
            meta_interval_schedule=o.meta_interval_schedule,
            compile=ctx.compile,
            weight_hidden=o.net_hidden,
            weight_depth=o.net_depth,
            weight_optimizer=o.net_optimizer,
            weight_lr=o.net_lr,
            weight_momentum=o.net_momentum,
            weight_nesterov=o.net_nesterov,
            weight_decay=o.net_decay,
            weight_init=o.net_init,
            class_counts=ctx.class_counts if class_aware else None,
            **({"weight_clusters": ctx.options["cmwnet"].clusters} if class_aware else {}),
            weight_net=net,
            frozen=not o.meta,
            freeze_epoch=o.freeze_epoch,
            freeze_tolerance=o.freeze_tolerance,
            soft_labels=ctx.soft_labels,
            soft_label_model=ctx.soft_label_model,
            mixup=bool(ctx.options["label_correction"].mixup) if label_correction else False,
            inputs=inputs,
            dynamics_decay=o.dynamics_decay,
            history=o.history,
            num_classes=len(ctx.class_counts),
            num_samples=samples,
            gate=o.gate,
            **ctx.common(),
        )

    return build


WEIGHT_LR = Knob("mwnet.net_lr", "wlr", "weighting-net lr")
"""Its values come from the weighting net's optimizer in each suite setting."""

for _descriptor in (
    MethodDescriptor("ce", _ce, compiles=True, description="cross-entropy"),
    MethodDescriptor(
        "focal",
        _focal,
        {"focal": FocalOptions},
        compiles=True,
        knob=Knob("focal.gamma", "gamma", "focal gamma", (1.0, 2.0)),
        description="focal loss (Lin et al., 2017)",
    ),
    MethodDescriptor(
        "class-balanced",
        _class_balanced,
        {"class_balanced": ClassBalancedOptions},
        reads_class_counts=True,
        compiles=True,
        knob=Knob("class_balanced.beta", "beta", "class-balanced beta", (0.9999, 0.999)),
        description="class-balanced loss (Cui et al., 2019)",
    ),
    MethodDescriptor(
        "l2rw",
        _l2rw,
        {"l2rw": L2RWOptions},
        reads_meta=True,
        description="learning to reweight (Ren et al., 2018)",
    ),
    MethodDescriptor(
        "finetune",
        _finetune,
        {"finetune": FinetuneOptions},
        reads_meta=True,
        trains_on_meta=True,
        knob=Knob("finetune.lr", "ftlr", "fine-tune lr", (0.001, 0.01)),
        description="cross-entropy, then fine-tuning on the clean meta set",
    ),
    MethodDescriptor(
        "mwnet",
        _weighting(False, False),
        {"mwnet": WeightingOptions},
        reads_meta=True,
        reads_index=True,  # for the inputs averaged per sample (method.mwnet.inputs)
        compiles=True,
        weighting=True,
        knob=WEIGHT_LR,
        description="Meta-Weight-Net (Shu et al., 2019)",
    ),
    MethodDescriptor(
        "cmwnet",
        _weighting(True, False),
        {"mwnet": WeightingOptions, "cmwnet": ClassAwareOptions},
        reads_meta=True,
        reads_class_counts=True,
        reads_index=True,
        compiles=True,
        weighting=True,
        class_aware=True,
        knob=WEIGHT_LR,
        description="CMW-Net (Shu et al., 2023): a class-aware weighting net",
    ),
    MethodDescriptor(
        "mwnet-sl",
        _weighting(False, True),
        {"mwnet": WeightingOptions, "label_correction": LabelCorrectionOptions},
        reads_meta=True,
        reads_teacher=True,
        reads_index=True,
        compiles=True,
        weighting=True,
        knob=WEIGHT_LR,
        description="MW-Net with label correction by an EMA teacher",
    ),
    MethodDescriptor(
        "cmwnet-sl",
        _weighting(True, True),
        {
            "mwnet": WeightingOptions,
            "cmwnet": ClassAwareOptions,
            "label_correction": LabelCorrectionOptions,
        },
        reads_meta=True,
        reads_teacher=True,
        reads_class_counts=True,
        reads_index=True,
        compiles=True,
        weighting=True,
        class_aware=True,
        knob=WEIGHT_LR,
        description="CMW-Net-SL: CMW-Net with label correction by an EMA teacher",
    ),
    MethodDescriptor(
        "gce",
        _loss_only(GeneralizedCrossEntropy, "gce", epochs=True),
        {"gce": GceOptions},
        compiles=True,
        knob=Knob("gce.q", "q", "GCE q", (0.7, 0.5)),
        description="generalized cross-entropy (Zhang & Sabuncu, 2018)",
    ),
    MethodDescriptor(
        "sce",
        _loss_only(SymmetricCrossEntropy, "sce"),
        {"sce": SceOptions},
        compiles=True,
        knob=Knob("sce.alpha", "alpha", "SCE alpha", (0.1, 1.0)),
        description="symmetric cross-entropy (Wang et al., 2019)",
    ),
    MethodDescriptor(
        "bootstrap-hard",
        _loss_only(BootstrapHard, "bootstrap_hard"),
        {"bootstrap_hard": BootstrapHardOptions},
        compiles=True,
        knob=Knob("bootstrap_hard.beta", "beta", "hard bootstrap beta", (0.8, 0.6)),
        description="hard bootstrapping (Reed et al., 2015)",
    ),
    MethodDescriptor(
        "bootstrap-soft",
        _loss_only(BootstrapSoft, "bootstrap_soft"),
        {"bootstrap_soft": BootstrapSoftOptions},
        compiles=True,
        knob=Knob("bootstrap_soft.beta", "beta", "soft bootstrap beta", (0.95, 0.8)),
        description="soft bootstrapping (Reed et al., 2015)",
    ),
    MethodDescriptor(
        "self-paced",
        _loss_only(SelfPaced, "self_paced", epochs=True),
        {"self_paced": SelfPacedOptions},
        compiles=True,
        knob=Knob("self_paced.start_fraction", "frac", "self-paced start fraction", (0.5, 0.7)),
        description="self-paced learning (Kumar et al., 2010)",
    ),
    MethodDescriptor(
        "mentornet-pd",
        _loss_only(MentorNetPD, "mentornet", epochs=True),
        {"mentornet": MentorNetOptions},
        compiles=True,
        knob=Knob("mentornet.percentile", "pct", "MentorNet percentile", (0.7, 0.5)),
        description="MentorNet, predefined curriculum (Jiang et al., 2018)",
    ),
    MethodDescriptor(
        "mentornet-dd",
        _mentornet_dd,
        {"mentornet": MentorNetOptions, "mentornet_dd": MentorNetDDOptions},
        reads_meta=True,
        compiles=True,
        knob=Knob(
            "mentornet_dd.mentor_noise_rate", "mnr", "MentorNet-DD mentor noise rate", (0.4, 0.2)
        ),
        description="MentorNet, data-driven curriculum learned on the trusted set "
        "(Jiang et al., 2018)",
    ),
    MethodDescriptor(
        "co-teaching",
        _co_teaching,
        {"co_teaching": CoTeachingOptions},
        knob=Knob("co_teaching.forget_rate", "forget", "co-teaching forget rate", (0.2, 0.4)),
        description="Co-teaching (Han et al., 2018): two networks, each trained on the "
        "samples the other finds small-loss",
    ),
    MethodDescriptor(
        "glc",
        _glc,
        {"glc": GlcOptions},
        reads_meta=True,
        knob=Knob("glc.trusted_weight", "tw", "GLC trusted weight", (1.0, 10.0)),
        description="gold loss correction (Hendrycks et al., 2018)",
    ),
    MethodDescriptor(
        "s-model",
        _s_model,
        {"s_model": SModelOptions},
        description="noise adaptation layer, S-Model (Goldberger & Ben-Reuven, 2017)",
    ),
    MethodDescriptor(
        "elr",
        _elr,
        {"elr": ELROptions},
        reads_index=True,
        compiles=True,
        knob=Knob("elr.lam", "lam", "ELR lambda", (3.0, 7.0)),
        description="early-learning regularization (Liu et al., 2020)",
    ),
    MethodDescriptor(
        "d2l",
        _d2l,
        {"d2l": D2LOptions},
        compiles=True,
        description="dimensionality-driven learning (Ma et al., 2018)",
    ),
    MethodDescriptor(
        "dividemix",
        _dividemix,
        {"dividemix": DivideMixOptions},
        reads_index=True,
        knob=Knob("dividemix.lambda_u", "lu", "DivideMix lambda_u", (25.0, 0.0)),
        description="DivideMix (Li et al., 2020): two networks, a loss mixture, MixMatch",
    ),
    MethodDescriptor(
        "mlc",
        _mlc,
        {"mlc": MlcOptions},
        reads_meta=True,
        knob=Knob("mlc.lr", "clr", "MLC correction-net lr", (3e-4, 3e-3)),
        description="Meta Label Correction (Zheng et al., 2021): a correction net, learned "
        "on the trusted set by meta-learning, rewrites each noisy label",
    ),
):
    register_method(_descriptor)

METHODS: tuple[str, ...] = method_names()
"""The built-in methods (:func:`method_names` also lists those registered later)."""
LABEL_CORRECTION_METHODS: tuple[str, ...] = tuple(
    n for n in METHODS if method_descriptor(n).reads_teacher
)
"""Weighting methods whose weight mixes the given label with a teacher's (CMW-Net-SL)."""
WEIGHTING_METHODS: tuple[str, ...] = tuple(n for n in METHODS if method_descriptor(n).weighting)
"""Methods that learn a weighting net: MW-Net's, or CMW-Net's class-aware one."""
COMPILABLE: tuple[str, ...] = tuple(n for n in METHODS if method_descriptor(n).compiles)
"""Built-in methods that accept ``compile``."""

_CONTEXT_KEYS = ("checks", "compile", "epochs")


def method_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The option groups of method ``name`` from ``options``: each group given by its name
    (a dataclass instance or a mapping of its fields), or in the flat form of earlier
    versions (``focal_gamma``, ``weight_lr``, ...: :data:`FLAT_KEYS`); keys of other
    methods are ignored. Groups not given are at their defaults."""
    descriptor = method_descriptor(name)
    groups = descriptor.default_options()
    flat: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if key in groups:
            kind = descriptor.options[key]
            if isinstance(value, kind):
                groups[key] = value
            elif isinstance(value, Mapping):
                groups[key] = kind(**dict(value))
            elif value is not None:
                raise ValueError(f"options[{key!r}] must be a {kind.__name__} or a mapping")
        for target in FLAT_KEYS.get(key, ()):
            group, option = target.split(".")
            if group in groups:
                flat.setdefault(group, {})[option] = value
    for group, values in flat.items():
        groups[group] = dataclasses.replace(groups[group], **values)
    return groups


def build_method(
    name: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    class_counts: torch.Tensor,
    options: Mapping[str, Any],
    reducer: GradientReducer | None = None,
    weight_net: nn.Module | None = None,
    soft_labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    soft_label_model: nn.Module | None = None,
    training_set: SamplePass | None = None,
    meta_set: SamplePass | None = None,
    new_network: Callable[[int], nn.Module] | None = None,
    new_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    seed: int = 0,
    augment: TrainingViews | None = None,
) -> Method:
    """The training method ``name`` (a registered one) for ``model`` and ``optimizer``.

    Args:
        meta_batches: endless iterator of clean ``(x_meta, y_meta)`` on the model's device;
            drawn from by the methods that read a meta set.
        class_counts: training-set sample count per class (observed labels), shape (K,);
            used by ``class-balanced`` and ``cmwnet`` (its class clusters).
        options: the method's option groups by group name (``{"focal":
            FocalOptions(gamma=2)}``, or a mapping of the group's fields), or flat keys
            of earlier versions (see :func:`method_options`); and ``checks`` (default
            True), ``compile`` (methods whose descriptor compiles: run the model through
            ``torch.compile``), ``epochs`` (the configured training epochs; finetune needs
            it).
        reducer: data parallelism over a process group (every method); the batches passed
            to ``step`` and drawn from ``meta_batches`` must then be this rank's shards.
        weight_net: weighting methods only: start from this weighting net (one learned
            in another run) instead of a fresh one; it must be of the method's kind.
        soft_labels: required by the label-correcting methods (``mwnet-sl``,
            ``cmwnet-sl``): a teacher's class probabilities for a batch's inputs.
        soft_label_model: the module ``soft_labels`` runs, if it has state that a step
            moves (an EMA teacher's BatchNorm statistics): restored when a step fails.
        training_set, meta_set: per-sample passes over the training set and the trusted
            set (:class:`~mwnet.methods.descriptor.SamplePass`), for methods that look at
            every sample between epochs.
        new_network: ``new_network(k)`` builds a fresh network of the model's architecture
            (methods that train two: ``co-teaching`` needs it).
        new_optimizer: an optimizer with the run's settings over the given parameters
            (``co-teaching`` without it: ``optimizer``'s class and settings).
        seed: the run's seed, for methods that draw their own random numbers.
        augment: ``augment(index, seed)``, fresh augmented views of training samples by
            position (:data:`~mwnet.methods.descriptor.TrainingViews`), for methods that
            augment a batch more than once (DivideMix).

    Raises:
        ValueError: for an unknown name (listing the known ones) or a bad option value.
    """
    descriptor = method_descriptor(name)
    compile = bool(options.get("compile", False))
    if compile and not descriptor.compiles:
        compilable = ", ".join(n for n in method_names() if method_descriptor(n).compiles)
        raise ValueError(f"compile is supported by {compilable}, not {name!r}; drop compile")
    epochs = options.get("epochs")
    context = MethodContext(
        model=model,
        optimizer=optimizer,
        meta_batches=meta_batches,
        class_counts=class_counts,
        options=method_options(name, options),
        epochs=epochs,
        compile=compile,
        checks=bool(options.get("checks", True)),
        reducer=reducer,
        weight_net=weight_net,
        soft_labels=soft_labels,
        soft_label_model=soft_label_model,
        training_set=training_set,
        meta_set=meta_set,
        new_network=new_network,
        new_optimizer=new_optimizer,
        seed=int(seed),
        augment=augment,
    )
    return descriptor.build(context)
