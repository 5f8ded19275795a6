"""Wall time of one training epoch on real data: cross-entropy next to MW-Net's modes.

``mwnet bench step`` times single steps on random tensors; this times what a user waits
for. Every variant is built by the training code itself (:func:`build_experiment` on the
same preset, data, split and seed, differing only in ``method.*``) and runs the training
loop's own epoch (:class:`Trainer`: batches made on the device, the method's step, the
per-step bookkeeping; no evaluation). All variants live in one process and take turns,
round by round in a rotating order, so a busy machine slows them alike and the ratios to
``ce`` compare like with like. The data is read from disk only, never downloaded.

Round r is epoch r of each variant's training (its model keeps training, and
:meth:`~mwnet.methods.Method.begin_epoch` sees epoch r), so a variant whose cost changes
from epoch to epoch (a schedule of meta updates, a weighting net frozen after a few
epochs) is timed as it trains: with as many rounds as the run has epochs, ``ratio_total``
(its summed epoch times over CE's) is the cost of the whole run. ``suite_setting`` times
the evidence suite's cells instead of a preset's: the suite's model, data size and
setting, and its method names as variants (``mwnet-fast``, ...); the bench's own choices
(device, threads, a smaller ``subset``, ``key=value`` overrides) are applied after the
cell's, so that they hold there too.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mwnet.bench.step import device_name, load_average
from mwnet.config import load_config
from mwnet.data import DatasetError
from mwnet.machine import allocator_note
from mwnet.methods import method_descriptor
from mwnet.suite.grid import FULL, METHOD_NAMES, cells
from mwnet.train.experiment import build_experiment, prepare_data
from mwnet.train.loop import Trainer

CE = "ce"
VARIANTS: dict[str, tuple[str, ...]] = {
    CE: ("method.name=ce",),
    "fast": ("method.name=mwnet", "method.mwnet.hypergrad=fast"),
    "fast+lowmem": (
        "method.name=mwnet",
        "method.mwnet.hypergrad=fast",
        "method.mwnet.low_memory=true",
    ),
    "head": ("method.name=mwnet", "method.mwnet.hypergrad=head"),
    "partial": ("method.name=mwnet", "method.mwnet.hypergrad=partial"),
    "cmwnet": ("method.name=cmwnet", "method.mwnet.hypergrad=fast"),
    "frozen": ("method.name=mwnet", "method.mwnet.meta=false"),
}
"""Each variant's config overrides on top of the preset. ``frozen`` applies a weighting net
learned elsewhere without any meta step: the net of ``method.mwnet.net_from`` when the
overrides name one, else a fresh MW-Net net (its cost does not depend on what it learned)."""
INTERVAL_VARIANTS = ("fast", "head")
"""Variants that are also timed with ``method.mwnet.meta_interval=K`` when K > 1."""
DEFAULT_SUBSET = 5000
"""Training images of a preset's epoch unless ``subset`` says otherwise."""


@dataclass(frozen=True)
class EpochBenchConfig:
    """What to time; the default is the Fashion-MNIST preset's small CNN on 5000 images."""

    preset: str = "fmnist-flip2-40"
    variants: tuple[str, ...] = (CE, "fast", "head")
    meta_interval: int = 5
    """K > 1 adds ``fast+interval(K)`` and ``head+interval(K)`` for those variants asked."""
    subset: int | None = None
    """Training images; None: :data:`DEFAULT_SUBSET` with a preset, the cell's own with
    ``suite_setting`` (given there: that many training images beside the cell's validation
    split, for a quick try; the cost of a suite run needs the cell's own size)."""
    model: str | None = None
    """A model name for ``model.name``; None keeps the preset's."""
    repeats: int = 1
    """Timed epochs per variant (rounds); the median is reported."""
    warmup_steps: int = 2
    threads: int | None = None
    device: str = "auto"
    overrides: tuple[str, ...] = field(default_factory=tuple)
    """Further ``key=value`` config overrides for every variant (e.g. ``data.root=DIR``)."""
    suite_setting: str | None = None
    """Time the suite's cells of this setting (seed 0, full scale) instead of ``preset``'s:
    variants may then be suite method names too; ``subset`` and ``model`` are the suite's."""


@dataclass
class EpochRow:
    """One variant's result; ``asdict`` of it is one object of the ``--json`` output."""

    variant: str
    method: str
    hypergrad: str | None
    meta_interval: int
    low_memory: bool
    preset: str
    model: str
    train_samples: int
    steps: int
    epoch_s: float
    """Median wall time of one training epoch, seconds."""
    epoch_s_all: list[float]
    ms_per_step: float
    ratio_to_ce: float | None
    epoch_s_total: float
    """Summed wall time of all rounds (epochs 0, 1, ... of the variant's training)."""
    ratio_total: float | None
    """``epoch_s_total`` over CE's: the cost of that many epochs of the variant's run."""
    device: str
    device_name: str
    torch_version: str
    threads: int
    load_average: list[float] | None
    allocator: str = ""
    """How CPU memory was allocated (:func:`mwnet.machine.allocator_note`)."""


def variant_overrides(
    variants: Sequence[str], meta_interval: int, suite_setting: str | None = None
) -> dict[str, list[str]]:
    """Variant name -> its config overrides, ``ce`` first when asked for (the baseline);
    with ``suite_setting``, suite method names (after the bench's own variants) too."""
    known = (*VARIANTS, *METHOD_NAMES) if suite_setting else tuple(VARIANTS)
    unknown = [v for v in variants if v not in known]
    if unknown:
        extra = "" if suite_setting else "; suite method names need a suite setting (--suite)"
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(known)}{extra}")
    if meta_interval < 1:
        raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
    chosen = {v: list(VARIANTS[v]) for v in VARIANTS if v in variants}
    if meta_interval > 1:
        for v in INTERVAL_VARIANTS:
            if v in variants:
                chosen[f"{v}+interval({meta_interval})"] = [
                    *VARIANTS[v],
                    f"method.mwnet.meta_interval={meta_interval}",
                ]
    if suite_setting is not None:
        if chosen:  # the bench's own variants run on the setting's CE cell
            base = _suite_overrides(suite_setting, CE)
            chosen = {name: [*base, *o] for name, o in chosen.items()}
        for name in (v for v in variants if v not in VARIANTS):
            chosen[name] = _suite_overrides(suite_setting, name)
    return chosen


def _suite_overrides(setting: str, method: str) -> list[str]:
    """The suite's full-scale cell of ``setting`` x ``method``, seed 0, as overrides."""
    found = [c for c in cells(FULL, (setting,), (method,)) if c.seed == 0]
    if not found:
        runs = sorted({c.method.name for c in cells(FULL, (setting,), METHOD_NAMES)})
        raise ValueError(
            f"the suite's setting {setting!r} has no {method!r} cell to time; it runs "
            f"{', '.join(runs) or 'no method'} (variants: suite method names of the setting)"
        )
    return list(found[0].overrides)


def _base_overrides(config: EpochBenchConfig) -> list[str]:
    # a suite cell names its device (cpu): "auto" leaves it, an explicit choice holds
    auto_in_suite = config.suite_setting is not None and config.device == "auto"
    base = [] if auto_in_suite else [f"device={config.device}"]
    if config.suite_setting is None:
        base.append(f"data.subset={config.subset or DEFAULT_SUBSET}")
    if config.model is not None:
        base.append(f"model.name={config.model}")
    if config.threads is not None:
        base.append(f"threads={config.threads}")
    return [*base, *config.overrides, "data.download=false"]


def _load_data(cfg: Any):
    try:
        return prepare_data(cfg)
    except DatasetError as err:
        hint = ""
        if cfg.data.dataset == "fashion-mnist":
            hint = (
                "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
                "pass data.root=DIR holding the four IDX files. "
            )
        raise DatasetError(
            f"mwnet bench epoch reads {cfg.data.dataset} from disk and never downloads it. "
            f"{hint}{err}"
        ) from None


def run_epoch_bench(config: EpochBenchConfig) -> list[EpochRow]:
    """Time one training epoch per variant; one row per variant, ``ce`` first.

    Changes torch's thread count only for the run (``config.threads``; restored after).
    """
    if config.repeats < 1 or config.warmup_steps < 0 or (config.subset or 1) < 1:
        raise ValueError("repeats and subset must be >= 1 and warmup_steps >= 0")
    overrides = variant_overrides(config.variants, config.meta_interval, config.suite_setting)
    base = _base_overrides(config)
    preset = None if config.suite_setting else config.preset
    threads_before = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "frozen" in overrides and not any("net_from=" in o for o in base):
                overrides["frozen"].append(f"method.mwnet.net_from={_fresh_weight_net(tmp)}")
            cfgs = {
                name: load_config(preset, _ordered(config, base, o))
                for name, o in overrides.items()
            }
            data = _load_data(next(iter(cfgs.values())))
            trainers = {
                name: Trainer(build_experiment(cfg, data), Path(tmp) / name, quiet=True)
                for name, cfg in cfgs.items()
            }
            return _time(config, trainers)
    finally:
        torch.set_num_threads(threads_before)


def _ordered(config: EpochBenchConfig, base: list[str], variant: list[str]) -> list[str]:
    """A variant's overrides: on a preset, the bench's then the variant's; on a suite cell,
    which sets its own device, threads and data size, the cell's then the bench's (and a
    ``subset`` given: that many training images plus the cell's validation split)."""
    if config.suite_setting is None:
        return [*base, *variant]
    sized = []
    if config.subset is not None:
        given = dict(o.split("=", 1) for o in [*variant, *base] if "=" in o)
        val = int(given.get("data.val_size") or 0)
        sized.append(f"data.subset={config.subset + val}")
    return [*variant, *base, *sized]


def _fresh_weight_net(directory: str) -> Path:
    """An untrained MW-Net weighting net saved for the ``frozen`` variant."""
    from mwnet.core import WeightNet
    from mwnet.run.weight_net_file import save_weight_net

    path = Path(directory) / "fresh_weight_net.pt"
    save_weight_net(path, WeightNet(), normalize=str(load_config(None).method.mwnet.normalize))
    return path


def _time(config: EpochBenchConfig, trainers: dict[str, Trainer]) -> list[EpochRow]:
    for trainer in trainers.values():  # kernels, allocator, lazy init: outside the timing
        exp = trainer.exp
        exp.model.train()
        for _ in range(config.warmup_steps):
            exp.method.step(*next(exp.meta_batches))
    names = list(trainers)
    times: dict[str, list[float]] = {n: [] for n in names}
    load_before = load_average()
    for round_ in range(config.repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            trainer = trainers[name]
            trainer.epoch = round_  # what the method's epoch schedule sees
            _sync(trainer.exp.device)
            start = time.perf_counter()
            trainer._train_epoch()  # the loop's epoch, exactly as `mwnet train` runs it
            _sync(trainer.exp.device)
            times[name].append(time.perf_counter() - start)
    loads = None if load_before is None else [load_before, load_average()]
    base = statistics.median(times[CE]) if CE in times else None
    base_total = sum(times[CE]) if CE in times else None
    rows = []
    for name in names:
        exp = trainers[name].exp
        median = statistics.median(times[name])
        steps = len(exp.train_batches)
        m = exp.cfg.method
        w = m.get("mwnet") if method_descriptor(m.name).weighting else None
        rows.append(
            EpochRow(
                variant=name,
                method=m.name,
                hypergrad=w.hypergrad if w is not None and w.meta else None,
                meta_interval=int(w.meta_interval) if w is not None else 1,
                low_memory=bool(w.low_memory) if w is not None else False,
                preset=(f"suite:{config.suite_setting}" if config.suite_setting else config.preset),
                model=exp.cfg.model.name,
                train_samples=len(exp.data.train_labels),
                steps=steps,
                epoch_s=median,
                epoch_s_all=times[name],
                ms_per_step=median / steps * 1e3,
                ratio_to_ce=None if base is None else median / base,
                epoch_s_total=sum(times[name]),
                ratio_total=None if base_total is None else sum(times[name]) / base_total,
                device=exp.device.type,
                device_name=device_name(exp.device),
                torch_version=torch.__version__,
                threads=torch.get_num_threads(),
                load_average=loads,
                allocator=allocator_note(),
            )
        )
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rows_to_json(rows: list[EpochRow]) -> str:
    """The ``--json`` output: a list of objects, one per variant."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def format_table(rows: list[EpochRow]) -> str:
    """A human-readable table with the machine it was measured on."""
    first = rows[0]
    loads = first.load_average
    load = f", load average {loads[0]:.2f} before, {loads[-1]:.2f} after" if loads else ""
    lines = [
        f"mwnet bench epoch: preset {first.preset}, model {first.model}, "
        f"{first.train_samples} training images ({first.steps} steps), "
        f"median of {len(first.epoch_s_all)} epoch(s) per variant; 'x ce total': summed "
        "over the rounds (epochs 1, 2, ... of each variant's run)",
        f"machine: {first.device} ({first.device_name}), torch {first.torch_version}, "
        f"threads {first.threads}{load}"
        + (f", {first.allocator}" if first.allocator and first.device == "cpu" else ""),
        "",
        f"{'variant':<26}{'epoch s':>9}{'ms/step':>9}{'x ce':>7}{'x ce total':>12}",
    ]
    for r in rows:
        ratio = "-" if r.ratio_to_ce is None else f"{r.ratio_to_ce:.2f}"
        total = "-" if r.ratio_total is None else f"{r.ratio_total:.2f}"
        lines.append(f"{r.variant:<26}{r.epoch_s:>9.2f}{r.ms_per_step:>9.1f}{ratio:>7}{total:>12}")
    return "\n".join(lines)
