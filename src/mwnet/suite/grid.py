"""What the Fashion-MNIST suite runs: settings x methods x hyperparameters x seeds.

Every cell is an ordinary ``mwnet train`` run (a config built from ``key=value``
overrides), so any cell can be re-run, inspected or resumed by hand. The scale was chosen
by measurement: a 784-256-10 MLP on 12,000 training images trains an epoch in about
0.3 s on one core (cross-entropy) and 1 s (MW-Net, exact hypergradient), and 30 epochs
without augmentation are enough for cross-entropy to memorise noisy labels visibly.

No number is chosen on the test set. Each method's learning rate, and its one main
hyperparameter where it has one (:class:`Knob`), is chosen from a small grid by the
last-epoch accuracy on a validation split held out of the *noisy* training data
(``data.val_size``: the same samples for every method of a seed, never trained on); see
:mod:`mwnet.suite.selection` for the seeds and the tie rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mwnet.methods import method_descriptor

# The weighting net's optimizer follows the paper per kind of setting: Adam 1e-3 for label
# noise (the authors' flip-noise script), SGD 1e-5 with Nesterov momentum for pure class
# imbalance (the authors' imbalance script). Adam 1e-3 on long-tailed data learns a steeply
# increasing weight that concentrates each normalised step on a few samples, and training
# becomes unstable at this learning rate.
NOISE_WEIGHT_OPTIMIZER = (
    "method.mwnet.net_optimizer=adam",
    "method.mwnet.net_lr=0.001",
    "method.mwnet.net_decay=0.0001",
)
IMBALANCE_WEIGHT_OPTIMIZER = (
    "method.mwnet.net_optimizer=sgd",
    "method.mwnet.net_lr=0.00001",
    "method.mwnet.net_momentum=0.9",
    "method.mwnet.net_nesterov=true",
    "method.mwnet.net_decay=0.0005",
)


LONG_TAIL_PROTOCOL = (
    "method.mwnet.net_optimizer=adam",
    "method.mwnet.net_lr=0.0001",
    "method.mwnet.net_decay=0.00001",
    "method.mwnet.normalize=sum-detached",
)


# No clean data: a pseudo-meta set picked every epoch after a cross-entropy warm-up (the
# scale's ``pseudo_meta_warmup`` epochs). The clean split is still carved and set aside
# unread, so these runs train on exactly the images (and corrupted labels) the clean-set
# runs of the same seed train on.
NO_CLEAN_SET = (
    "data.meta_source=auto",
    "data.holdout_meta=true",
    "data.pseudo_meta_per_class=10",
)
# Label correction as the CMW-Net-SL authors run it: mixup, mean normalisation, a
# weighting-net update every 10th step by Adam 1e-4 (weight decay 1e-4).
LABEL_CORRECTION = (
    "method.label_correction.mixup=true",
    "method.mwnet.normalize=mean",
    "method.mwnet.meta_interval=10",
    "method.mwnet.net_optimizer=adam",
    "method.mwnet.net_lr=0.0001",
    "method.mwnet.net_decay=0.0001",
)


@dataclass(frozen=True)
class Setting:
    """One corruption of the training set (and, for the clean-set and small-data axes, one
    size of the clean set or of the training set)."""

    name: str
    title: str
    overrides: tuple[str, ...]
    noisy: bool
    """Some training labels are wrong (a clean-vs-corrupted split exists)."""
    imbalanced: bool
    group: str = "main"
    """``main`` (the headline), ``clean-size`` (the clean-set size axis), ``small``,
    ``full-train`` or ``regime`` (the small CNN on 6,000 images: the cheap modes' cost)."""
    methods: tuple[str, ...] | None = None
    """The methods this setting runs (None: every method asked for)."""
    clean_per_class: int | None = None
    """Clean meta images per class, instead of the default (1,000 in all; 10 per class for
    imbalance); the quick scale divides it by its ``clean_divisor``."""
    small: bool = False
    """Trains on the scale's small training set (``Scale.small_overrides``)."""
    seeds: tuple[int, ...] | None = None
    """Seeds instead of the scale's noisy/clean seeds."""
    varies: str | None = None
    """The main setting this one varies (the clean-set size axis, the full training set)."""
    select_from: str | None = None
    """Use the hyperparameters selected in this other setting instead of searching (the
    full-training-set regime, too slow to search on 2 cores)."""
    fixed: bool = False
    """No search: every method at its default values and this setting's overrides."""
    in_default: bool = True
    """Run unless the settings are named (``--settings``)."""
    cost_factor: float = 1.0
    """A run's cost relative to the same method's in a main setting, at the full scale
    (for the time estimate :data:`SECONDS_PER_COST`)."""


@dataclass(frozen=True)
class Knob:
    """A method's one main hyperparameter besides the learning rate, searched on a grid.

    ``values`` are searched in order, the method's default first (a tie keeps the earlier
    value). For the weighting net's learning rate the values depend on the optimizer the
    setting gives the net: see :func:`knob_values`."""

    key: str
    tag: str
    """Short name in run-directory names, e.g. ``gamma`` in ``focal-lr0.05-gamma2-seed0``."""
    label: str
    """Name in the report, e.g. ``focal gamma``."""
    values: tuple[float, ...] = ()


def method_knob(name: str) -> Knob:
    """The knob the method's descriptor names, as the grid searches it."""
    knob = method_descriptor(name).knob
    if knob is None:
        raise ValueError(f"method {name!r} names no knob")
    return Knob(f"method.{knob.key}", knob.tag, knob.label, knob.values)


FOCAL_GAMMA = method_knob("focal")
CB_BETA = method_knob("class-balanced")
FINETUNE_LR = method_knob("finetune")
WEIGHT_LR = method_knob("mwnet")
"""Values from the weighting net's optimizer: Adam 1e-3 and 1e-4, SGD 1e-5 and 1e-4."""
WEIGHT_LRS = {"adam": (0.001, 0.0001), "sgd": (0.00001, 0.0001)}

LRS = (0.05, 0.01)
"""The classifier's learning rates searched for every method (0.05: the suite's former
shared value, first so that it wins a tie; 0.01: where heavy noise and L2RW want it)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    title: str
    overrides: tuple[str, ...]
    cost: float
    """Rough cost relative to cross-entropy, to start the slow cells first."""
    default: bool = True
    """Part of the suite unless asked for by name (``--methods``)."""
    weight_optimizer: tuple[str, ...] | None = None
    """The weighting net's optimizer and normalisation, instead of the setting's default."""
    knob: Knob | None = None
    """The main hyperparameter searched besides the learning rate, if any."""
    tune_lr: bool = True
    """Search ``optim.lr`` (False where it is not used, e.g. fine-tuning a finished model)."""
    imbalance_only: bool = False
    """Runs only in settings with a long tail: elsewhere its class counts are equal (up to
    the noise draw), so it is cross-entropy with extra steps."""
    after: str | None = None
    """A method whose selected run, same setting and seed, this one continues from."""
    stage: str | None = None
    """With ``after``: ``retrain`` (the same training without the labels ``mwnet issues``
    flags in that run: ``data.exclude``) or ``finetune`` (fine-tune that run's model on the
    clean set: ``model.init_from``)."""
    listed_only: bool = False
    """Runs only in settings that name it in :attr:`Setting.methods`."""
    noise_only: bool = False
    """Runs only in settings with wrong labels (a method made for label noise: on clean or
    only long-tailed labels it is cross-entropy with extra steps, and the grid's time goes
    where the comparison is)."""


SETTINGS: tuple[Setting, ...] = (
    Setting("clean", "clean labels", ("data.noise=none",), False, False),
    Setting(
        "uniform-60",
        "uniform noise 60 %",
        ("data.noise=uniform", "data.noise_rate=0.6"),
        True,
        False,
    ),
    Setting(
        "uniform-exclusive-40",
        "uniform-exclusive noise 40 %",
        ("data.noise=uniform-exclusive", "data.noise_rate=0.4"),
        True,
        False,
        in_default=False,
    ),
    Setting(
        "flip2-40", "flip2 noise 40 %", ("data.noise=flip2", "data.noise_rate=0.4"), True, False
    ),
    # Pair noise, long tail with noise and the annotator-like noise on request: with the
    # field's methods in every noisy setting, the default grid keeps to about 3 hours on 2
    # cores with the paper's two noise kinds, instance-dependent noise, clean labels and
    # the long tail.
    Setting(
        "pair-40",
        "pair noise 40 %",
        ("data.noise=pair", "data.noise_rate=0.4"),
        True,
        False,
        in_default=False,
    ),
    Setting(
        "instance-40",
        "instance-dependent noise 40 % (Xia et al.)",
        ("data.noise=instance", "data.noise_rate=0.4"),
        True,
        False,
    ),
    Setting(
        "annotator-40",
        "annotator-like noise 40 % (ambiguous images to the class they resemble)",
        ("data.noise=annotator", "data.noise_rate=0.4"),
        True,
        False,
        in_default=False,
    ),
    Setting("lt-100", "long tail IF 100", ("data.imbalance_factor=100",), False, True),
    Setting(
        "lt-10", "long tail IF 10", ("data.imbalance_factor=10",), False, True, in_default=False
    ),
    Setting(
        "lt-100-flip2-20",
        "long tail IF 100 + flip2 noise 20 %",
        ("data.imbalance_factor=100", "data.noise=flip2", "data.noise_rate=0.2"),
        True,
        True,
        in_default=False,
    ),
)

CLEAN_SIZE_METHODS = (
    "l2rw",
    "finetune",
    "mwnet-fast",
    "cmwnet",
    "mwnet-fast-retrain",
    "mwnet-fast-finetune",
)
"""The clean-set size axis: the methods that read the clean set, and the combinations a user
with one would try. CE and the no-clean-set methods do not depend on its size; the axis
shows their main-setting numbers as references."""
CLEAN_SIZES = (10, 30)
"""Clean images per class on the axis besides the main settings' 100 (1,000 in all)."""
DEFAULT_CLEAN_SIZES = (10,)
"""The sizes the default grid runs (the axis's far end, 100 images: 0.8 % of the training
set, the paper's regime), under flip2 noise; 300 images, and the uniform-noise axis, on
request (``--settings``), to keep the default grid within its time budget."""


def _clean_size_settings() -> tuple[Setting, ...]:
    out = []
    for base in (s for s in SETTINGS if s.name in ("flip2-40", "uniform-60")):
        for per_class in CLEAN_SIZES:
            out.append(
                Setting(
                    f"{base.name}-clean{10 * per_class}",
                    f"{base.title}, {10 * per_class:,} clean images",
                    base.overrides,
                    base.noisy,
                    base.imbalanced,
                    group="clean-size",
                    methods=CLEAN_SIZE_METHODS,
                    clean_per_class=per_class,
                    varies=base.name,
                    select_from=base.name,
                    in_default=per_class in DEFAULT_CLEAN_SIZES and base.name == "flip2-40",
                )
            )
    return tuple(out)


def _full_train_settings() -> tuple[Setting, ...]:
    """The regime closer to the paper's: all 60,000 training images but the 1,000 clean
    ones (1.7 %) and the validation split; MLP with the selections of the 12,000-image
    settings, and the small CNN at its preset's values (10 epochs)."""
    out = []
    for base in (s for s in SETTINGS if s.name in ("flip2-40", "uniform-60")):
        out.append(
            Setting(
                f"full-{base.name}",
                f"{base.title}, all training images (1,000 clean = 1.7 %)",
                (*base.overrides, "data.subset=null"),
                True,
                False,
                group="full-train",
                methods=FULL_TRAIN_METHODS,
                varies=base.name,
                select_from=base.name,
                in_default=False,
                cost_factor=FULL_TRAIN_SIZE,
            )
        )
    for base in (s for s in SETTINGS if s.name in ("flip2-40", "uniform-60")):
        out.append(
            Setting(
                f"full-cnn-{base.name}",
                f"{base.title}, all training images, small CNN",
                (*base.overrides, "data.subset=null", *CNN_OVERRIDES),
                True,
                False,
                group="full-train",
                methods=FULL_CNN_METHODS,
                varies=base.name,
                fixed=True,
                in_default=False,
                cost_factor=FULL_TRAIN_SIZE * CNN_STEP_COST * 10 / 30,
            )
        )
    return tuple(out)


FULL_TRAIN_METHODS = ("ce", "finetune", "mwnet-fast", "mwnet-fast-finetune")
"""CE, fine-tuning, MW-Net and MW-Net then fine-tuning: the comparison the clean-set share
is about (a retraining would be another whole CE run on 58,000 images). The MLP takes the
12,000-image settings' selections, fine-tune's learning rates among them."""
FULL_CNN_METHODS = ("ce", "ce-finetune", "mwnet-fast", "mwnet-fast-finetune")
"""The small CNN's: fine-tuning continues the CE run (CE -> fine-tune, like MW-Net ->
fine-tune) instead of repeating its 10 epochs on 58,000 images: 13 of a seed's about
70 minutes of runs (measured, see :data:`CNN_STEP_COST`)."""
CNN_OVERRIDES = (
    "model.name=cnn_small",
    "model.options={}",
    "optim.lr=0.01",
    "optim.epochs=10",
    "optim.milestones=[6,8]",
)
"""The ``fmnist-*`` presets' small CNN and schedule (lr 0.05 diverges there under 40 %
noise): fixed values, not selected."""

FULL_TRAIN_SIZE = 58000 / 12000
"""Training images of the full-training-set regime against the main settings' (all 60,000
but the clean set and the validation split)."""
CNN_STEP_COST = 13.7
"""A small-CNN run's cost per image-epoch against the 784-256-10 MLP run's, one thread,
measured on whole runs (per-epoch evaluation included, so far below the 50x of a bare
training step, 85 ms against 1.7 ms): the full-CNN regime's 16 runs of seeds 0 and 1 took
3.9 h summed, MW-Net 33 min a run, CE 13 min, each fine-tuning 5-6 min."""
SECONDS_PER_COST = 31.0
"""Seconds of one thread per unit of :attr:`MethodSpec.cost` for a main-setting run at the
full scale, measured: the default grid's 302 runs (486 cost units) took 4.22 h summed over
runs, two at a time on 2 cores (start-up and plotting, about 7-10 s a run, not counted)."""

REGIME_METHODS = (
    "ce",
    "mwnet-fast",
    "mwnet-famus",
    "mwnet-partial",
    "mwnet-head",
    "mwnet-fast-k5",
    "mwnet-partial-k5",
    "mwnet-head-k5",
)
"""The cheap MW-Net modes against the exact step and CE where a step's time is arithmetic
(the small CNN), not the MLP's Python overhead: each mode alone, and every 5th step."""
REGIME_SUBSET = 7000
"""6,000 training images and the scale's 1,000-image validation split (the clean set, the
usual 1,000 images, is carved before the subset is drawn)."""
REGIME_COST_FACTOR = 2.4
"""A CE run's time against a main-setting CE run's (31 s, :data:`SECONDS_PER_COST`),
measured: one epoch of the small CNN on the 6,000 images, its test and validation passes
included, took 7.2 s on one thread (75 s a run); a guide for the time estimate only."""


def _regime_settings() -> tuple[Setting, ...]:
    """The small CNN at its preset's values on 6,000 noisy images, under the two noises the
    cheap modes were judged on in docs/PERFORMANCE.md (at the MLP): no search, three seeds."""
    out = []
    for base in (s for s in SETTINGS if s.name in ("flip2-40", "pair-40")):
        out.append(
            Setting(
                f"cnn-{base.name}",
                f"{base.title}, 6,000 training images, small CNN",
                (*base.overrides, *CNN_OVERRIDES, f"data.subset={REGIME_SUBSET}"),
                True,
                False,
                group="regime",
                methods=REGIME_METHODS,
                seeds=(0, 1, 2),
                varies=base.name,
                fixed=True,
                in_default=False,
                cost_factor=REGIME_COST_FACTOR,
            )
        )
    return tuple(out)


SMALL_SEEDS = (0, 1, 2, 3, 4)
SETTINGS += (
    *_clean_size_settings(),
    Setting(
        "small-flip2-40",
        "small data: 1,000 training images, 100 clean, flip2 noise 40 %",
        ("data.noise=flip2", "data.noise_rate=0.4"),
        True,
        False,
        group="small",
        small=True,
        seeds=SMALL_SEEDS,
        cost_factor=0.15,  # a twelfth of the training, the same 10,000-image test pass
    ),
    *_full_train_settings(),
    *_regime_settings(),
)


def _mwnet(
    mode: str,
    suffix: str,
    what: str,
    method: tuple[str, ...],
    cost: float,
    data: tuple[str, ...] = (),
    weight_lr: float | None = None,
    knob: Knob | None = None,
) -> MethodSpec:
    """A non-default MW-Net variant for the noisy settings: the hypergradient ``mode``,
    ``method.mwnet.*`` overrides (given without the ``method.mwnet.`` prefix), other overrides
    (``data.*``, ``model.*``), the noise settings' Adam at another learning rate, and the
    knob searched besides the learning rate."""
    vnet = None
    if weight_lr is not None:
        vnet = tuple(
            f"method.mwnet.net_lr={weight_lr}" if o.startswith("method.mwnet.net_lr=") else o
            for o in NOISE_WEIGHT_OPTIMIZER
        )
    return MethodSpec(
        f"mwnet-{mode}-{suffix}",
        f"MW-Net ({mode}, {what})",
        (
            "method.name=mwnet",
            f"method.mwnet.hypergrad={mode}",
            *(f"method.mwnet.{m}" for m in method),
            *data,
        ),
        cost,
        default=False,
        weight_optimizer=vnet,
        knob=knob,
    )


def _mwnet_fast(suffix: str, what: str, method: tuple[str, ...], cost: float, **kw) -> MethodSpec:
    return _mwnet("fast", suffix, what, method, cost, **kw)


DIVIDEMIX_SCALE = ("method.dividemix.warmup_epochs=3", "method.dividemix.rampup_epochs=5")
"""DivideMix's warm-up and lambda_u ramp at the suite's 30 epochs: the authors' 10 and 16 of
300 (CIFAR-10) scaled to the point where cross-entropy starts memorising here (the
cross-entropy runs' ``memorized_corrupted`` rises from about epoch 4): a division made
after memorisation sees every label as clean."""

MLP2 = ("model.options.hidden=[256,256]",)
"""A second hidden layer, so that a partial step has a middle to cut at."""


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("ce", "CE", ("method.name=ce",), 1.0),
    # Focal loss never beat CE under label noise in the former grid: on request only.
    MethodSpec("focal", "focal", ("method.name=focal",), 1.0, default=False, knob=FOCAL_GAMMA),
    MethodSpec(
        "class-balanced",
        "class-balanced",
        ("method.name=class-balanced",),
        1.0,
        knob=CB_BETA,
        imbalance_only=True,
    ),
    MethodSpec("l2rw", "L2RW", ("method.name=l2rw",), 3.0),
    # The field's methods (the MW-Net paper's comparison, and what practitioners use
    # today), each with its descriptor's knob; costs measured as multiples of CE's run.
    MethodSpec("glc", "GLC", ("method.name=glc",), 2.2, knob=method_knob("glc"), noise_only=True),
    MethodSpec(
        "co-teaching",
        "Co-teaching",
        ("method.name=co-teaching",),
        2.0,
        knob=method_knob("co-teaching"),
        noise_only=True,
    ),
    MethodSpec(
        "dividemix",
        "DivideMix",
        ("method.name=dividemix", *DIVIDEMIX_SCALE),
        4.0,
        knob=method_knob("dividemix"),
        noise_only=True,
    ),
    MethodSpec("elr", "ELR", ("method.name=elr",), 1.1, knob=method_knob("elr"), noise_only=True),
    MethodSpec("gce", "GCE", ("method.name=gce",), 1.0, knob=method_knob("gce"), noise_only=True),
    MethodSpec("sce", "SCE", ("method.name=sce",), 1.0, knob=method_knob("sce"), noise_only=True),
    MethodSpec(
        "bootstrap-hard",
        "bootstrap (hard)",
        ("method.name=bootstrap-hard",),
        1.0,
        knob=method_knob("bootstrap-hard"),
        noise_only=True,
    ),
    MethodSpec(
        "bootstrap-soft",
        "bootstrap (soft)",
        ("method.name=bootstrap-soft",),
        1.0,
        default=False,
        knob=method_knob("bootstrap-soft"),
        noise_only=True,
    ),
    MethodSpec(
        "self-paced",
        "self-paced",
        ("method.name=self-paced",),
        1.0,
        knob=method_knob("self-paced"),
        noise_only=True,
    ),
    MethodSpec(
        "mentornet-pd",
        "MentorNet (PD)",
        ("method.name=mentornet-pd",),
        1.0,
        knob=method_knob("mentornet-pd"),
        noise_only=True,
    ),
    MethodSpec(
        "mentornet-dd",
        "MentorNet (DD)",
        ("method.name=mentornet-dd",),
        1.1,
        knob=method_knob("mentornet-dd"),
        noise_only=True,
    ),
    MethodSpec(
        "mlc",
        "MLC",
        ("method.name=mlc",),
        3.0,
        knob=method_knob("mlc"),
        noise_only=True,
    ),
    MethodSpec("s-model", "S-Model", ("method.name=s-model",), 2.0, noise_only=True),
    MethodSpec("d2l", "D2L", ("method.name=d2l",), 1.3, noise_only=True),
    MethodSpec("finetune", "fine-tune", ("method.name=finetune",), 1.2, knob=FINETUNE_LR),
    # Fine-tuning CE's finished model on the clean set: the fine-tune baseline where a
    # second training on the full set would cost as much as the CE run it repeats (the
    # full-training-set regime), and the same continuation as MW-Net -> fine-tune.
    MethodSpec(
        "ce-finetune",
        "CE → fine-tune",
        ("method.name=finetune", "optim.epochs=0"),
        0.3,
        knob=FINETUNE_LR,
        tune_lr=False,
        after="ce",
        stage="finetune",
        listed_only=True,
    ),
    MethodSpec(
        "mwnet-fast",
        "MW-Net (fast)",
        ("method.name=mwnet", "method.mwnet.hypergrad=fast"),
        3.5,
        knob=WEIGHT_LR,
    ),
    # The cheap recipe's mode; docs/PERFORMANCE.md measures it against the exact step.
    MethodSpec(
        "mwnet-head",
        "MW-Net (head)",
        ("method.name=mwnet", "method.mwnet.hypergrad=head"),
        3.4,
        default=False,
        knob=WEIGHT_LR,
    ),
    # CMW-Net's class-aware weighting net, with MW-Net's weighting-net optimizer per setting,
    # so the two differ only in the net.
    MethodSpec(
        "cmwnet",
        "CMW-Net (fast)",
        ("method.name=cmwnet", "method.mwnet.hypergrad=fast"),
        3.6,
        knob=WEIGHT_LR,
    ),
    # No clean image read: label correction on a pseudo-meta set (the class-aware net).
    MethodSpec(
        "cmwnet-sl",
        "CMW-Net-SL (no clean data)",
        ("method.name=cmwnet-sl", "method.mwnet.hypergrad=fast", *NO_CLEAN_SET),
        1.8,
        weight_optimizer=LABEL_CORRECTION,
        knob=WEIGHT_LR,
    ),
    # What a user with a clean set would try after a weighting run: drop the labels
    # `mwnet issues` flags in it and train cross-entropy again, or fine-tune its model on
    # the clean set.
    MethodSpec(
        "mwnet-fast-retrain",
        "MW-Net → CE without flagged labels",
        ("method.name=ce",),
        1.0,
        after="mwnet-fast",
        stage="retrain",
    ),
    MethodSpec(
        "mwnet-fast-finetune",
        "MW-Net → fine-tune",
        ("method.name=finetune", "optim.epochs=0"),
        0.3,
        knob=FINETUNE_LR,
        tune_lr=False,
        after="mwnet-fast",
        stage="finetune",
    ),
    # The cheap modes of the speed comparison: a weighting-net update every 5th step.
    MethodSpec(
        "mwnet-fast-k5",
        "MW-Net (fast, k=5)",
        ("method.name=mwnet", "method.mwnet.hypergrad=fast", "method.mwnet.meta_interval=5"),
        1.6,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-head-k5",
        "MW-Net (head, k=5)",
        ("method.name=mwnet", "method.mwnet.hypergrad=head", "method.mwnet.meta_interval=5"),
        1.2,
        default=False,
        knob=WEIGHT_LR,
    ),
    # Spending the weighting-net updates well (the cheap recipe is chosen among these by
    # measurement): fewer updates with a larger step, a larger meta batch on the update
    # steps, every step early and sparser later, and a net frozen once it has learned.
    _mwnet_fast("k10-wlr0.01", "k=10, weight lr x10", ("meta_interval=10",), 1.5, weight_lr=0.01),
    _mwnet_fast("k5-wlr0.003", "k=5, weight lr x3", ("meta_interval=5",), 1.4, weight_lr=0.003),
    _mwnet_fast("k10-wlr0.003", "k=10, weight lr x3", ("meta_interval=10",), 1.3, weight_lr=0.003),
    _mwnet("head", "k3", "k=3", ("meta_interval=3",), 1.3),
    # The other cheap modes at the library's defaults. FaMUS: 4 layers drawn uniformly at
    # each meta update, the kept terms not rescaled (the paper's Eq. 9); on cnn_small, 4 of
    # its 5 layers (conv, bn, conv, bn, linear), so the meta gradient's expectation is
    # 4/5 of the exact one. Partial: the default top, the last stage and the classifier
    # (cnn_small: features.1, the second conv-bn block, and the linear head).
    MethodSpec(
        "mwnet-famus",
        "MW-Net (famus: 4 random layers, not rescaled)",
        ("method.name=mwnet", "method.mwnet.hypergrad=famus"),
        3.0,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-partial",
        "MW-Net (partial: top = last stage + classifier)",
        ("method.name=mwnet", "method.mwnet.hypergrad=partial"),
        2.5,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-partial-k5",
        "MW-Net (partial, k=5)",
        ("method.name=mwnet", "method.mwnet.hypergrad=partial", "method.mwnet.meta_interval=5"),
        1.3,
        default=False,
        knob=WEIGHT_LR,
    ),
    _mwnet("head", "k5-wlr0.003", "k=5, weight lr x3", ("meta_interval=5",), 1.2, weight_lr=0.003),
    _mwnet_fast("freeze3", "frozen after epoch 3", ("freeze_epoch=3",), 1.3),
    _mwnet_fast("k1to20", "k=1 for 2 epochs, then k=20", ("meta_interval_schedule=20@2",), 1.4),
    _mwnet_fast("freeze2", "frozen after epoch 2", ("freeze_epoch=2",), 1.3),
    _mwnet_fast(
        "k2-freeze4",
        "k=2, frozen after epoch 4",
        ("meta_interval=2", "freeze_epoch=4"),
        1.3,
    ),
    _mwnet_fast(
        "k5-freeze8",
        "k=5, frozen after epoch 8",
        ("meta_interval=5", "freeze_epoch=8"),
        1.3,
    ),
    _mwnet_fast(
        "k10-mb500-freeze12",
        "k=10, meta batch 500, frozen after epoch 12",
        ("meta_interval=10", "freeze_epoch=12"),
        1.3,
        data=("data.meta_batch_size=500",),
    ),
    _mwnet_fast(
        "k5-tol0.1",
        "k=5, frozen once the curve moves < 0.1 in an epoch",
        ("meta_interval=5", "freeze_tolerance=0.1"),
        1.4,
    ),
    _mwnet("head", "freeze4", "frozen after epoch 4", ("freeze_epoch=4",), 1.2),
    # MW-Net's own defaults under the selection protocol, one at a time (searched exactly
    # as MW-Net is): a weighting net that starts flat (every weight 0.5) instead of with
    # the seed's random slope, the noise settings' Adam at the other rate the authors use
    # (1e-4, in their "stable" scripts), and meta batches a quarter and four times the default 100
    # (the four-times one only where the clean set has 1,000 images: a 100-image set
    # would repeat samples within a batch).
    _mwnet_fast("flat", "flat start", ("net_init=flat",), 3.5, knob=WEIGHT_LR),
    _mwnet_fast("wlr0.0001", "weighting-net lr 1e-4", (), 3.5, weight_lr=0.0001, knob=WEIGHT_LR),
    # ... and faster: a small training set gives the weighting net few updates to learn in.
    _mwnet_fast("wlr0.003", "weighting-net lr 3e-3", (), 3.5, weight_lr=0.003, knob=WEIGHT_LR),
    _mwnet_fast("wlr0.01", "weighting-net lr 1e-2", (), 3.5, weight_lr=0.01, knob=WEIGHT_LR),
    _mwnet_fast(
        "mb25", "meta batch 25", (), 3.3, data=("data.meta_batch_size=25",), knob=WEIGHT_LR
    ),
    _mwnet_fast(
        "mb400", "meta batch 400", (), 4.0, data=("data.meta_batch_size=400",), knob=WEIGHT_LR
    ),
    # Learned weighting under noise that follows the images: a weighting net that reads
    # the run's training dynamics besides the loss, and the curve's weights gated by each
    # sample's own meta gradient (L2RW's signal).
    MethodSpec(
        "mwnet-dynamics",
        "MW-Net (fast, loss + dynamics)",
        (
            "method.name=mwnet",
            "method.mwnet.hypergrad=fast",
            "method.mwnet.inputs=[loss,agreement,margin,loss_ema]",
        ),
        3.6,
        default=False,
        knob=WEIGHT_LR,
    ),
    # MROLS's input, kept online: each sample's losses at its last 10 visits.
    MethodSpec(
        "mwnet-history",
        "MW-Net (fast, loss + loss sequence)",
        (
            "method.name=mwnet",
            "method.mwnet.hypergrad=fast",
            "method.mwnet.inputs=[loss,loss_history]",
        ),
        3.6,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-gate",
        "MW-Net (fast, meta-sign gate)",
        ("method.name=mwnet", "method.mwnet.hypergrad=fast", "method.mwnet.gate=meta-sign"),
        4.5,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-reverse",
        "MW-Net (reverse)",
        ("method.name=mwnet", "method.mwnet.hypergrad=reverse"),
        5.0,
        default=False,
    ),
    # A deeper MLP, where the partial step has a middle: fast, head and partial (the last
    # hidden layer and the classifier take the virtual step) on the same model.
    _mwnet("fast", "mlp2", "784-256-256-10 MLP", (), 3.5, data=MLP2),
    _mwnet("head", "mlp2", "784-256-256-10 MLP", (), 1.8, data=MLP2),
    _mwnet("partial", "mlp2", "784-256-256-10 MLP, top: the last hidden layer", (), 2.5, data=MLP2),
    MethodSpec("ce-mlp2", "CE (784-256-256-10 MLP)", ("method.name=ce", *MLP2), 1.0, default=False),
    # The CMW-Net authors' long-tail protocol at the suite's scale: plain CE until the first
    # lr decay, then the weighting net by Adam 1e-4 (weight decay 1e-5), weights normalised
    # by a sum held constant in the hypergradient; and MW-Net under the same protocol.
    MethodSpec(
        "cmwnet-lt",
        "CMW-Net (authors' long-tail protocol)",
        ("method.name=cmwnet", "method.mwnet.hypergrad=fast", "method.warmup_epochs=15"),
        3.0,
        default=False,
        weight_optimizer=LONG_TAIL_PROTOCOL,
    ),
    MethodSpec(
        "mwnet-lt",
        "MW-Net (same long-tail protocol)",
        ("method.name=mwnet", "method.mwnet.hypergrad=fast", "method.warmup_epochs=15"),
        3.0,
        default=False,
        weight_optimizer=LONG_TAIL_PROTOCOL,
    ),
    MethodSpec(
        "mwnet-auto",
        "MW-Net (pseudo-meta set)",
        ("method.name=mwnet", "method.mwnet.hypergrad=fast", *NO_CLEAN_SET),
        3.0,
        default=False,
        knob=WEIGHT_LR,
    ),
    MethodSpec(
        "mwnet-sl",
        "MW-Net-SL (no clean data)",
        ("method.name=mwnet-sl", "method.mwnet.hypergrad=fast", *NO_CLEAN_SET),
        1.6,
        default=False,
        weight_optimizer=LABEL_CORRECTION,
        knob=WEIGHT_LR,
    ),
)
NO_CLEAN_METHODS = (
    "ce",
    "focal",
    "class-balanced",
    "co-teaching",
    "dividemix",
    "elr",
    "gce",
    "sce",
    "bootstrap-hard",
    "bootstrap-soft",
    "self-paced",
    "mentornet-pd",
    "s-model",
    "d2l",
    "mwnet-auto",
    "mwnet-sl",
    "cmwnet-sl",
)
"""The "no clean data" group of the report: methods that never read a clean example."""
PSEUDO_META_METHODS = ("mwnet-auto", "mwnet-sl", "cmwnet-sl")
"""The no-clean-data methods that pick a pseudo-meta set from the noisy training data."""

SETTING_NAMES = tuple(s.name for s in SETTINGS)
DEFAULT_SETTINGS = tuple(s.name for s in SETTINGS if s.in_default)
METHOD_NAMES = tuple(m.name for m in METHODS)
DEFAULT_METHODS = tuple(m.name for m in METHODS if m.default)


def setting_named(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def registered_methods() -> tuple[MethodSpec, ...]:
    """Suite rows for the methods registered beyond the table (a user's own, see
    :func:`mwnet.register_method`): on request only, the learning rate and the
    descriptor's knob searched."""
    from mwnet.methods import method_names

    listed = {m.name for m in METHODS}
    rows = []
    for name in method_names():
        described = method_descriptor(name)
        if name in listed:
            continue
        knob = described.knob
        rows.append(
            MethodSpec(
                name,
                described.description or name,
                (f"method.name={name}",),
                3.0 if described.reads_meta else 1.0,
                default=False,
                knob=None if knob is None else method_knob(name),
            )
        )
    return tuple(rows)


def suite_methods() -> tuple[MethodSpec, ...]:
    """The table's methods, then :func:`registered_methods`."""
    return (*METHODS, *registered_methods())


def method_named(name: str) -> MethodSpec:
    return next(m for m in suite_methods() if m.name == name)


def clean_size_row(base: Setting) -> list[str]:
    """The settings of one clean-set size axis, smallest clean set first, and last the setting
    it varies (the main settings' clean set)."""
    axis = sorted(
        (s for s in SETTINGS if s.group == "clean-size" and s.varies == base.name),
        key=lambda s: s.clean_per_class or 0,
    )
    return [s.name for s in axis] + [base.name]


@dataclass(frozen=True)
class Scale:
    """How big each cell is: the full suite, or the tiny one a smoke test runs."""

    name: str
    subset: int
    """Training images kept (seeded) before the validation split is held out of them."""
    val_size: int
    epochs: int
    milestones: tuple[int, ...]
    hidden: int
    finetune_epochs: int
    noisy_seeds: tuple[int, ...]
    pseudo_meta_warmup: int
    """Cross-entropy epochs before the first pseudo-meta set (no-clean-data methods)."""
    clean_seeds: tuple[int, ...] = (0,)
    extra: tuple[str, ...] = field(default=())
    lrs: tuple[float, ...] = LRS
    knob_values: int = 2
    """How many of each knob's values are searched (the first ones)."""
    weight_lr_values: int = 1
    """How many weighting-net learning rates are searched: the default alone, to keep the
    default grid within its time budget (the weighting methods cost 3-5 cross-entropy runs
    each; in CMW-Net's first-seed grids on clean labels, uniform 60 % and uniform-exclusive
    40 %, the two Adam rates differed by at most 1.0 point of test accuracy at any
    classifier learning rate (0.5 or less in 7 of the 8 pairs), the classifier's learning
    rates by up to 3.5)."""
    clean_divisor: int = 1
    """Divides a setting's clean images per class (the quick scale's tiny data)."""
    small_overrides: tuple[str, ...] = ()
    """The small-data setting's training set, validation split and clean set."""
    small_seeds: int | None = None
    """Seeds of the small-data setting (the first ones of its list); None: all."""
    chance_rule: bool = True
    """A finished run no better on the validation split than a constant answer counts as
    diverged and is never selected (off at the quick scale, whose 2-epoch models on a
    20-sample split are at chance by design)."""

    @property
    def train_samples(self) -> int:
        return self.subset - self.val_size

    def base_overrides(self) -> tuple[str, ...]:
        return (
            "data.dataset=fashion-mnist",
            "data.augment=false",
            f"data.subset={self.subset}",
            f"data.val_size={self.val_size}",
            "data.batch_size=100",
            "data.meta_batch_size=100",
            "model.name=mlp",
            f"model.options.hidden=[{self.hidden}]",
            "optim.lr=0.05",
            "optim.momentum=0.9",
            "optim.weight_decay=0.0005",
            f"optim.epochs={self.epochs}",
            "optim.schedule=multistep",
            f"optim.milestones=[{','.join(str(m) for m in self.milestones)}]",
            f"method.finetune.epochs={self.finetune_epochs}",
            "threads=1",
            "device=cpu",
            *self.extra,
        )


FULL = Scale(
    name="full",
    subset=13000,
    val_size=1000,
    epochs=30,
    milestones=(15, 22),
    hidden=256,
    finetune_epochs=10,
    noisy_seeds=(0, 1, 2),
    clean_seeds=(0, 1, 2),
    pseudo_meta_warmup=5,
    small_overrides=("data.subset=1200", "data.val_size=200", "data.meta_per_class=10"),
)
QUICK = Scale(
    name="quick",
    subset=200,
    val_size=20,
    epochs=2,
    milestones=(1,),
    hidden=16,
    finetune_epochs=1,
    noisy_seeds=(0, 1),
    clean_seeds=(0,),
    pseudo_meta_warmup=1,
    extra=("data.meta_per_class=2", "data.batch_size=50", "data.meta_batch_size=20"),
    lrs=(0.05, 0.01),
    knob_values=1,
    clean_divisor=10,
    small_overrides=("data.subset=60", "data.val_size=10", "data.meta_per_class=1"),
    small_seeds=2,
    chance_rule=False,
)


@dataclass(frozen=True)
class Candidate:
    """One point of a method's hyperparameter grid: a name for it and its overrides."""

    tag: str
    overrides: tuple[str, ...]
    values: tuple[tuple[str, float], ...]
    """(label, value) pairs, for the report."""


@dataclass(frozen=True)
class Cell:
    """One training run of the suite."""

    setting: Setting
    method: MethodSpec
    seed: int
    overrides: tuple[str, ...]
    tag: str = ""
    """The hyperparameter candidate (empty: the method's default values)."""

    @property
    def run_name(self) -> str:
        middle = f"-{self.tag}" if self.tag else ""
        return f"{self.method.name}{middle}-seed{self.seed}"

    @property
    def label(self) -> str:
        tag = f" {self.tag}" if self.tag else ""
        return f"{self.setting.name} / {self.method.name}{tag} / seed {self.seed}"


def _number(value: float) -> str:
    """A value as run names show it: ``0.05``, ``1e-05``."""
    return f"{value:g}"


def _decimal(value: float) -> str:
    """A value as configs are given it: positional (``0.00001``, never ``1e-05``, which
    YAML 1.1 would read as a string)."""
    return np.format_float_positional(value, trim="-")


def weight_optimizer(setting: Setting, method: MethodSpec) -> tuple[str, ...]:
    """The weighting net's optimizer overrides a method gets in a setting."""
    if method.weight_optimizer is not None:
        return method.weight_optimizer
    if setting.noisy or not setting.imbalanced:
        return NOISE_WEIGHT_OPTIMIZER
    return IMBALANCE_WEIGHT_OPTIMIZER


def knob_values(setting: Setting, method: MethodSpec, scale: Scale) -> tuple[float, ...]:
    """The values of the method's knob searched in this setting (its default first)."""
    knob = method.knob
    if knob is None:
        return ()
    if knob == WEIGHT_LR:
        given = dict(o.split("=", 1) for o in weight_optimizer(setting, method))
        default = float(given["method.mwnet.net_lr"])
        family = WEIGHT_LRS[given["method.mwnet.net_optimizer"]]
        values = (default, *(v for v in family if v != default))
        return values[: scale.weight_lr_values]
    return knob.values[: scale.knob_values]


def candidates(setting: Setting, method: MethodSpec, scale: Scale) -> list[Candidate]:
    """The method's hyperparameter grid in this setting, in search order (defaults first);
    a fixed setting has one candidate, with no overrides."""
    if setting.fixed:
        return [Candidate("", (), ())]
    lrs = scale.lrs if method.tune_lr else (None,)
    knob = method.knob
    values = knob_values(setting, method, scale) if knob else (None,)
    out = []
    for lr in lrs:
        for value in values:
            tags, overrides, shown = [], [], []
            if lr is not None:
                tags.append(f"lr{_number(lr)}")
                overrides.append(f"optim.lr={_decimal(lr)}")
                shown.append(("lr", lr))
            if knob is not None and value is not None:
                tags.append(f"{knob.tag}{_number(value)}")
                overrides.append(f"{knob.key}={_decimal(value)}")
                shown.append((knob.label, value))
            out.append(Candidate("-".join(tags), tuple(overrides), tuple(shown)))
    return out


def seeds_of(setting: Setting, scale: Scale) -> tuple[int, ...]:
    if setting.seeds is not None:
        return setting.seeds[: scale.small_seeds] if setting.small else setting.seeds
    return scale.noisy_seeds if setting.noisy or setting.imbalanced else scale.clean_seeds


def methods_of(setting: Setting, methods: tuple[str, ...]) -> list[MethodSpec]:
    """The methods of ``methods`` a setting runs, in the suite's order."""
    listed = setting.methods or ()
    every = suite_methods()
    allowed = setting.methods if setting.methods is not None else tuple(m.name for m in every)
    return [
        m
        for m in every
        if m.name in methods
        and m.name in allowed
        and (setting.imbalanced or not m.imbalance_only)
        and (setting.noisy or not m.noise_only)
        and (m.name in listed or not m.listed_only)
    ]


def merged(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """``key=value`` overrides with later keys replacing earlier ones, in first-seen order:
    one value per key, so a run's config says plainly what it was trained with."""
    values: dict[str, str] = {}
    for group in groups:
        for item in group:
            key, value = item.split("=", 1)
            for inner in [k for k in values if k.startswith(key + ".")]:
                del values[inner]  # a whole mapping given anew replaces its keys
            values[key] = value
    return tuple(f"{k}={v}" for k, v in values.items())


def cell_overrides(
    scale: Scale,
    setting: Setting,
    method: MethodSpec,
    seed: int,
    candidate: Candidate | None = None,
    source_dir: str | None = None,
) -> tuple[str, ...]:
    """The config of one run: shared, setting, method, candidate, continuation, seed (the
    keys of option groups the method does not read left out)."""
    from mwnet.train.config import read_overrides

    sized: tuple[str, ...] = ()
    if setting.clean_per_class is not None:
        per_class = max(1, setting.clean_per_class // scale.clean_divisor)
        sized = (f"data.meta_per_class={per_class}",)
    if setting.small:
        sized = scale.small_overrides
    stage: tuple[str, ...] = ()
    if method.after is not None:
        if source_dir is None:
            raise ValueError(f"{method.name} continues a {method.after} run: give its directory")
        if method.stage == "retrain":  # a class flagged whole keeps its samples
            stage = (f"data.exclude={source_dir}", "data.exclude_spares_classes=true")
        else:
            stage = (f"model.init_from={source_dir}",)
    return read_overrides(
        merged(
            scale.base_overrides(),
            setting.overrides,
            sized,
            method.overrides,
            weight_optimizer(setting, method),
            (
                (f"method.warmup_epochs={scale.pseudo_meta_warmup}",)
                if "data.meta_source=auto" in method.overrides
                else ()
            ),
            candidate.overrides if candidate is not None else (),
            stage,
            (f"seed={seed}",),
        )
    )


def cells(
    scale: Scale,
    settings: tuple[str, ...] = DEFAULT_SETTINGS,
    methods: tuple[str, ...] = DEFAULT_METHODS,
) -> list[Cell]:
    """Every run at each method's default hyperparameters (no search, no continuations):
    the fixed protocol benchmarks build on. Slowest first."""
    check_names(settings, methods)
    out = []
    for setting in (s for s in SETTINGS if s.name in settings):
        for method in methods_of(setting, methods):
            if method.after is not None:
                continue
            for seed in seeds_of(setting, scale):
                overrides = cell_overrides(scale, setting, method, seed)
                out.append(Cell(setting, method, seed, overrides))
    return sorted(out, key=lambda c: -c.method.cost)


def check_names(settings: tuple[str, ...], methods: tuple[str, ...]) -> None:
    unknown = [s for s in settings if s not in SETTING_NAMES]
    names = [m.name for m in suite_methods()]
    unknown += [m for m in methods if m not in names]
    if unknown:
        raise ValueError(
            f"unknown suite setting or method {unknown[0]!r}; settings: "
            f"{', '.join(SETTING_NAMES)}; methods: {', '.join(names)}"
        )
