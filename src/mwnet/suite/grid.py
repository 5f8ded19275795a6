"""What the Fashion-MNIST suite runs: settings x methods x seeds, at a size a 2-core CPU
finishes in under two hours.

Every cell is an ordinary ``mwnet train`` run (a config built from ``key=value``
overrides), so any cell can be re-run, inspected or resumed by hand. The size was chosen
by measurement, not by taste: a 784-256-10 MLP on 12,000 training images trains an epoch
in about 0.4 s on one quiet core (cross-entropy) and 1.2 s (MW-Net, exact hypergradient),
and 30 epochs at lr 0.05 without augmentation are enough for cross-entropy to memorise
noisy labels visibly (its last-epoch accuracy falls below its best).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The weighting net's optimizer follows the paper per kind of setting: Adam 1e-3 for label
# noise (the authors' flip-noise script), SGD 1e-5 with Nesterov momentum for pure class
# imbalance (the authors' imbalance script). Adam 1e-3 on long-tailed data learns a steeply
# increasing weight that concentrates each normalised step on a few samples, and training
# becomes unstable at this learning rate.
NOISE_WEIGHT_OPTIMIZER = (
    "method.weight_optimizer=adam",
    "method.weight_lr=0.001",
    "method.weight_decay=0.0001",
)
IMBALANCE_WEIGHT_OPTIMIZER = (
    "method.weight_optimizer=sgd",
    "method.weight_lr=0.00001",
    "method.weight_momentum=0.9",
    "method.weight_nesterov=true",
    "method.weight_decay=0.0005",
)


LONG_TAIL_PROTOCOL = (
    "method.weight_optimizer=adam",
    "method.weight_lr=0.0001",
    "method.weight_decay=0.00001",
    "method.normalize=sum-detached",
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
    "method.mixup=true",
    "method.normalize=mean",
    "method.meta_interval=10",
    "method.weight_optimizer=adam",
    "method.weight_lr=0.0001",
    "method.weight_decay=0.0001",
)


@dataclass(frozen=True)
class Setting:
    """One corruption of the training set."""

    name: str
    title: str
    overrides: tuple[str, ...]
    noisy: bool
    """Some training labels are wrong (a clean-vs-corrupted split exists)."""
    imbalanced: bool


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
    ),
    Setting(
        "flip2-40", "flip2 noise 40 %", ("data.noise=flip2", "data.noise_rate=0.4"), True, False
    ),
    Setting("pair-40", "pair noise 40 %", ("data.noise=pair", "data.noise_rate=0.4"), True, False),
    Setting("lt-100", "long tail IF 100", ("data.imbalance_factor=100",), False, True),
    Setting("lt-10", "long tail IF 10", ("data.imbalance_factor=10",), False, True),
    Setting(
        "lt-100-flip2-20",
        "long tail IF 100 + flip2 noise 20 %",
        ("data.imbalance_factor=100", "data.noise=flip2", "data.noise_rate=0.2"),
        True,
        True,
    ),
)


def _mwnet(
    mode: str,
    suffix: str,
    what: str,
    method: tuple[str, ...],
    cost: float,
    data: tuple[str, ...] = (),
    weight_lr: float | None = None,
) -> MethodSpec:
    """A non-default MW-Net variant for the noisy settings: the hypergradient ``mode``,
    ``method.*`` overrides (given without the ``method.`` prefix), other overrides
    (``data.*``, ``model.*``), and the noise settings' Adam at another learning rate."""
    vnet = None
    if weight_lr is not None:
        vnet = tuple(
            f"method.weight_lr={weight_lr}" if o.startswith("method.weight_lr=") else o
            for o in NOISE_WEIGHT_OPTIMIZER
        )
    return MethodSpec(
        f"mwnet-{mode}-{suffix}",
        f"MW-Net ({mode}, {what})",
        ("method.name=mwnet", f"method.hypergrad={mode}", *(f"method.{m}" for m in method), *data),
        cost,
        default=False,
        weight_optimizer=vnet,
    )


def _mwnet_fast(suffix: str, what: str, method: tuple[str, ...], cost: float, **kw) -> MethodSpec:
    return _mwnet("fast", suffix, what, method, cost, **kw)


MLP2 = ("model.options.hidden=[256,256]",)
"""A second hidden layer, so that a partial step has a middle to cut at."""


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("ce", "CE", ("method.name=ce",), 1.0),
    MethodSpec("focal", "focal", ("method.name=focal",), 1.0),
    MethodSpec("class-balanced", "class-balanced", ("method.name=class-balanced",), 1.0),
    MethodSpec("l2rw", "L2RW", ("method.name=l2rw",), 3.0),
    MethodSpec("finetune", "fine-tune", ("method.name=finetune",), 1.2),
    MethodSpec("mwnet-fast", "MW-Net (fast)", ("method.name=mwnet", "method.hypergrad=fast"), 3.5),
    MethodSpec("mwnet-head", "MW-Net (head)", ("method.name=mwnet", "method.hypergrad=head"), 1.8),
    # CMW-Net's class-aware weighting net, with MW-Net's weighting-net optimizer per setting,
    # so the two differ only in the net.
    MethodSpec("cmwnet", "CMW-Net (fast)", ("method.name=cmwnet", "method.hypergrad=fast"), 3.6),
    # L2RW's weights often select a handful of samples per batch, and at the shared lr 0.05
    # it diverges; this variant shows what it does at a stable learning rate.
    MethodSpec(
        "l2rw-lr0.01", "L2RW (lr 0.01)", ("method.name=l2rw", "optim.lr=0.01"), 3.0, default=False
    ),
    MethodSpec(
        "ce-lr0.01", "CE (lr 0.01)", ("method.name=ce", "optim.lr=0.01"), 1.0, default=False
    ),
    MethodSpec(
        "mwnet-fast-lr0.01",
        "MW-Net (fast, lr 0.01)",
        ("method.name=mwnet", "method.hypergrad=fast", "optim.lr=0.01"),
        3.5,
        default=False,
    ),
    # The cheap modes of the speed comparison: a weighting-net update every 5th step.
    MethodSpec(
        "mwnet-fast-k5",
        "MW-Net (fast, k=5)",
        ("method.name=mwnet", "method.hypergrad=fast", "method.meta_interval=5"),
        1.6,
        default=False,
    ),
    MethodSpec(
        "mwnet-head-k5",
        "MW-Net (head, k=5)",
        ("method.name=mwnet", "method.hypergrad=head", "method.meta_interval=5"),
        1.2,
        default=False,
    ),
    # Spending the weighting-net updates well (the cheap recipe is chosen among these by
    # measurement): fewer updates with a larger step, a larger meta batch on the update
    # steps, every step early and sparser later, and a net frozen once it has learned.
    _mwnet_fast("k10-wlr0.01", "k=10, weight lr x10", ("meta_interval=10",), 1.5, weight_lr=0.01),
    _mwnet_fast("k5-wlr0.003", "k=5, weight lr x3", ("meta_interval=5",), 1.4, weight_lr=0.003),
    _mwnet_fast("k10-wlr0.003", "k=10, weight lr x3", ("meta_interval=10",), 1.3, weight_lr=0.003),
    _mwnet("head", "k3", "k=3", ("meta_interval=3",), 1.3),
    _mwnet("head", "k5-wlr0.003", "k=5, weight lr x3", ("meta_interval=5",), 1.2, weight_lr=0.003),
    _mwnet_fast("freeze3", "frozen after epoch 3", ("weight_net_freeze_epoch=3",), 1.3),
    _mwnet_fast("k1to20", "k=1 for 2 epochs, then k=20", ("meta_interval_schedule=20@2",), 1.4),
    _mwnet_fast("freeze2", "frozen after epoch 2", ("weight_net_freeze_epoch=2",), 1.3),
    _mwnet_fast(
        "k2-freeze4",
        "k=2, frozen after epoch 4",
        ("meta_interval=2", "weight_net_freeze_epoch=4"),
        1.3,
    ),
    _mwnet_fast(
        "k5-freeze8",
        "k=5, frozen after epoch 8",
        ("meta_interval=5", "weight_net_freeze_epoch=8"),
        1.3,
    ),
    _mwnet_fast(
        "k10-mb500-freeze12",
        "k=10, meta batch 500, frozen after epoch 12",
        ("meta_interval=10", "weight_net_freeze_epoch=12"),
        1.3,
        data=("data.meta_batch_size=500",),
    ),
    _mwnet_fast(
        "k5-tol0.1",
        "k=5, frozen once the curve moves < 0.1 in an epoch",
        ("meta_interval=5", "weight_net_freeze_tolerance=0.1"),
        1.4,
    ),
    _mwnet("head", "freeze4", "frozen after epoch 4", ("weight_net_freeze_epoch=4",), 1.2),
    MethodSpec(
        "mwnet-reverse",
        "MW-Net (reverse)",
        ("method.name=mwnet", "method.hypergrad=reverse"),
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
        ("method.name=cmwnet", "method.hypergrad=fast", "method.warmup_epochs=15"),
        3.0,
        default=False,
        weight_optimizer=LONG_TAIL_PROTOCOL,
    ),
    MethodSpec(
        "mwnet-lt",
        "MW-Net (same long-tail protocol)",
        ("method.name=mwnet", "method.hypergrad=fast", "method.warmup_epochs=15"),
        3.0,
        default=False,
        weight_optimizer=LONG_TAIL_PROTOCOL,
    ),
    # The "no clean data" group (CE and focal never read the meta set, so their rows serve
    # this group as they are).
    MethodSpec(
        "mwnet-auto",
        "MW-Net (pseudo-meta set)",
        ("method.name=mwnet", "method.hypergrad=fast", *NO_CLEAN_SET),
        3.0,
        default=False,
    ),
    MethodSpec(
        "mwnet-sl",
        "MW-Net-SL (no clean data)",
        ("method.name=mwnet-sl", "method.hypergrad=fast", *NO_CLEAN_SET),
        1.6,
        default=False,
        weight_optimizer=LABEL_CORRECTION,
    ),
    MethodSpec(
        "cmwnet-sl",
        "CMW-Net-SL (no clean data)",
        ("method.name=cmwnet-sl", "method.hypergrad=fast", *NO_CLEAN_SET),
        1.6,
        default=False,
        weight_optimizer=LABEL_CORRECTION,
    ),
)
NO_CLEAN_METHODS = ("ce", "focal", "mwnet-auto", "mwnet-sl", "cmwnet-sl")
"""The "no clean data" group of the report: methods that never read a clean example."""

SETTING_NAMES = tuple(s.name for s in SETTINGS)
METHOD_NAMES = tuple(m.name for m in METHODS)
DEFAULT_METHODS = tuple(m.name for m in METHODS if m.default)


@dataclass(frozen=True)
class Scale:
    """How big each cell is: the full suite, or the tiny one a smoke test runs."""

    name: str
    subset: int
    epochs: int
    milestones: tuple[int, ...]
    hidden: int
    finetune_epochs: int
    noisy_seeds: tuple[int, ...]
    pseudo_meta_warmup: int
    """Cross-entropy epochs before the first pseudo-meta set (no-clean-data methods)."""
    clean_seeds: tuple[int, ...] = (0,)
    extra: tuple[str, ...] = field(default=())

    def base_overrides(self) -> tuple[str, ...]:
        return (
            "data.dataset=fashion-mnist",
            "data.augment=false",
            f"data.subset={self.subset}",
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
            f"method.finetune_epochs={self.finetune_epochs}",
            "threads=1",
            "device=cpu",
            *self.extra,
        )


FULL = Scale(
    name="full",
    subset=12000,
    epochs=30,
    milestones=(15, 22),
    hidden=256,
    finetune_epochs=10,
    noisy_seeds=(0, 1, 2),
    pseudo_meta_warmup=5,
)
QUICK = Scale(
    name="quick",
    subset=200,
    epochs=2,
    milestones=(1,),
    hidden=16,
    finetune_epochs=1,
    noisy_seeds=(0,),
    pseudo_meta_warmup=1,
    extra=("data.meta_per_class=2", "data.batch_size=50", "data.meta_batch_size=20"),
)


@dataclass(frozen=True)
class Cell:
    """One training run of the suite."""

    setting: Setting
    method: MethodSpec
    seed: int
    overrides: tuple[str, ...]

    @property
    def run_name(self) -> str:
        return f"{self.method.name}-seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.setting.name} / {self.method.name} / seed {self.seed}"


def cells(
    scale: Scale,
    settings: tuple[str, ...] = SETTING_NAMES,
    methods: tuple[str, ...] = DEFAULT_METHODS,
) -> list[Cell]:
    """Every run of the suite, slowest first so parallel workers finish together."""
    unknown = [s for s in settings if s not in SETTING_NAMES]
    unknown += [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(
            f"unknown suite setting or method {unknown[0]!r}; settings: "
            f"{', '.join(SETTING_NAMES)}; methods: {', '.join(METHOD_NAMES)}"
        )
    out = []
    for setting in (s for s in SETTINGS if s.name in settings):
        seeds = scale.noisy_seeds if setting.noisy or setting.imbalanced else scale.clean_seeds
        vnet = IMBALANCE_WEIGHT_OPTIMIZER
        if setting.noisy or not setting.imbalanced:
            vnet = NOISE_WEIGHT_OPTIMIZER
        for method in (m for m in METHODS if m.name in methods):
            for seed in seeds:
                overrides = (
                    *scale.base_overrides(),
                    *setting.overrides,
                    *method.overrides,
                    *(vnet if method.weight_optimizer is None else method.weight_optimizer),
                    *(
                        (f"method.warmup_epochs={scale.pseudo_meta_warmup}",)
                        if "data.meta_source=auto" in method.overrides
                        else ()
                    ),
                    f"seed={seed}",
                )
                out.append(Cell(setting, method, seed, overrides))
    return sorted(out, key=lambda c: -c.method.cost)
