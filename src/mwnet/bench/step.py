"""Time and memory of one training step: plain SGD vs MW-Net with each hypergradient mode.

All modes run in one process, interleaved round-robin (each round runs every mode once,
in a rotating order), so clock drift, thermal throttling and noisy neighbours hit every
mode alike; the reported ratios compare medians from the same run. Each mode owns its
model copy and optimizers, so no state leaks from one mode into another. An interval
mode (weighting-net update every K steps) is timed over K consecutive steps per round,
divided by K: the amortised cost, not the median of mostly cheap steps.

``fast+lowmem`` is ``fast`` with ``low_memory=True`` (the training graph freed before the
meta pass, the forward run again for the real update). ``partial`` is the partial virtual
step with the model's default top (its last stage and classifier); each ``cuts`` entry
NAME adds ``partial@NAME``, whose top begins at the module NAME
(:func:`mwnet.core.partial.modules_from`: NAME and every module registered after it).
``famus`` is FaMUS's layer-wise approximation with four layers drawn uniformly each step
(seed 0), ``famus+top`` with the four layers nearest the output
(:mod:`mwnet.core.famus`). With ``compile`` the run adds
``plain+compile`` and ``<mode>+compile`` for the modes ``torch.compile`` supports, timed in
the same rounds; their ratios are to ``plain+compile``, so they show what the meta step
costs when both sides are compiled (compare the medians for what compiling gains).

Peak memory is the extra memory a step needs above the resident model and data. On
CUDA it is ``max_memory_allocated`` during a step minus the allocation before it. On CPU
the process's peak RSS can only grow, so each mode is measured in a fresh subprocess
(:mod:`mwnet.bench.step_memory`) that builds the same setup. RSS also holds what glibc's
allocator keeps after tensors are freed, which depends on the order of allocations as much
as on their sizes; ``live_memory`` runs those subprocesses with a fixed mmap threshold
(every tensor above 128 KiB mapped on its own and unmapped when freed), so the peak follows
the live tensors, the quantity ``max_memory_allocated`` reports on CUDA.
"""

from __future__ import annotations

import copy
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mwnet.core import MetaReweighter, WeightNet
from mwnet.core.famus import LayerSampling
from mwnet.core.partial import modules_from
from mwnet.machine import allocator_note
from mwnet.models import build, input_shape

PLAIN = "plain"
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
LIVE_MMAP_THRESHOLD = 128 * 1024
LOW_MEMORY_SUFFIX = "+lowmem"
PARTIAL = "partial"
CUT_SEPARATOR = "@"
FAMUS = "famus"
TOP_SUFFIX = "+top"
HYPERGRAD_MODES = (
    "reverse",
    "fast",
    "fast" + LOW_MEMORY_SUFFIX,
    "head",
    PARTIAL,
    FAMUS,
    FAMUS + TOP_SUFFIX,
)
MODES = (PLAIN, *HYPERGRAD_MODES)
COMPILE_SUFFIX = "+compile"
COMPILABLE_MODES = (PLAIN, "fast", "fast" + LOW_MEMORY_SUFFIX)
"""Modes with a compiled variant (see :mod:`mwnet.core.compiled` for why not the others)."""


@dataclass(frozen=True)
class ModeSpec:
    """One benchmarked variant: ``hypergrad=None`` is the plain step."""

    name: str
    hypergrad: str | None = None
    meta_interval: int = 1
    low_memory: bool = False
    compile: bool = False
    cut: str | None = None
    """``partial`` only: the module where the top begins; None: the default top."""
    famus: str | None = None
    """``famus`` only: how its layers are chosen (``uniform`` or ``top``)."""


def mode_spec(mode: str, meta_interval: int = 1, compile: bool = False) -> ModeSpec:
    """The variant a mode name means: ``plain``, ``<hypergrad>``, ``fast+lowmem``,
    ``partial@NAME``, each with ``+interval(K)`` appended to its name when ``meta_interval``
    K > 1 and ``+compile`` when compiled."""
    base, at, cut = mode.partition(CUT_SEPARATOR)
    if base not in MODES or (at and (base != PARTIAL or not cut)):
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)} or partial@MODULE")
    if meta_interval < 1:
        raise ValueError(f"meta_interval must be >= 1, got {meta_interval}")
    if compile and mode not in COMPILABLE_MODES:
        raise ValueError(f"mode {mode!r} cannot be compiled; only {', '.join(COMPILABLE_MODES)}")
    suffix = COMPILE_SUFFIX if compile else ""
    if mode == PLAIN:
        return ModeSpec(PLAIN + suffix, compile=compile)
    name = mode if meta_interval == 1 else f"{mode}+interval({meta_interval})"
    hypergrad = base.removesuffix(LOW_MEMORY_SUFFIX).removesuffix(TOP_SUFFIX)
    low_memory = base.endswith(LOW_MEMORY_SUFFIX)
    famus = None if hypergrad != FAMUS else ("top" if base.endswith(TOP_SUFFIX) else "uniform")
    return ModeSpec(
        name + suffix, hypergrad, meta_interval, low_memory, compile, cut or None, famus
    )


def mode_specs(
    modes: Sequence[str], meta_interval: int = 1, compile: bool = False, cuts: Sequence[str] = ()
) -> list[ModeSpec]:
    """The variants to run: always ``plain`` first (the ratios' baseline), then each
    requested hypergradient mode (``partial@NAME`` for each of ``cuts`` after ``partial``'s
    place), then ``<mode>+interval(K)`` for each when K > 1, then with ``compile``
    ``plain+compile`` and the compiled variants of the requested modes (and of their
    interval variants)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    wanted = []
    for m in HYPERGRAD_MODES:
        if m in modes:
            wanted.append(m)
        if m == PARTIAL:
            wanted += [f"{PARTIAL}{CUT_SEPARATOR}{c}" for c in cuts]
    specs = [mode_spec(PLAIN, meta_interval)] + [mode_spec(m) for m in wanted]
    if meta_interval > 1:
        specs += [mode_spec(m, meta_interval) for m in wanted]
    if compile:
        compilable = [m for m in wanted if m in COMPILABLE_MODES]
        specs += [mode_spec(PLAIN, compile=True)] + [mode_spec(m, compile=True) for m in compilable]
        if meta_interval > 1:
            specs += [mode_spec(m, meta_interval, compile=True) for m in compilable]
    return specs


def bench_model(name: str) -> tuple[str, dict[str, int]]:
    """Registry name and options of a benchmark model name.

    ``wrn-D-W`` is the registry's ``wrn`` at depth D and width W (``wrn-16-2`` is a WRN a CPU
    can time; the paper's ``wrn28_10`` is registered by name); any other name is passed to
    :func:`mwnet.models.build` as it is.
    """
    match = re.fullmatch(r"wrn-(\d+)-(\d+)", name)
    if match:
        return "wrn", {"depth": int(match[1]), "width": int(match[2])}
    return name, {}


@dataclass(frozen=True)
class StepBenchConfig:
    """What to benchmark; the defaults are the paper's ResNet-32 setting (batch 100)."""

    model: str = "resnet32"
    batch: int = 100
    meta_batch: int = 100
    repeats: int = 20
    warmup: int = 3
    modes: tuple[str, ...] = MODES
    cuts: tuple[str, ...] = ()
    """Module names where a ``partial@NAME`` variant's top begins (see the module doc)."""
    meta_interval: int = 1
    device: str = "auto"
    threads: int | None = None
    memory: bool = True
    compile: bool = False
    """Also time ``plain+compile`` and the compiled variants of the requested modes."""
    live_memory: bool = False
    """CPU: measure peak memory with glibc's mmap threshold fixed (live tensors only)."""
    num_classes: int = 10
    seed: int = 0


@dataclass
class BenchRow:
    """One mode's result; ``asdict`` of it is one object of the ``--json`` output."""

    mode: str
    model: str
    batch: int
    meta_batch: int
    hypergrad: str | None
    meta_interval: int
    low_memory: bool
    compiled: bool
    repeats: int
    median_ms: float
    p25_ms: float
    p75_ms: float
    ratio_to_plain: float
    peak_mem_mb: float | None
    peak_mem_ratio: float | None
    memory_measure: str | None
    """How peak memory was measured: ``cuda-allocated``, ``cpu-rss``, ``cpu-rss-live``."""
    device: str
    device_name: str
    torch_version: str
    threads: int
    load_average: list[float] | None = None
    """1-minute load average before and after the timing (Unix), next to every figure: on a
    shared machine it says how much the clock was competing."""
    allocator: str = ""
    """How CPU memory was allocated (:func:`mwnet.machine.allocator_note`): reusing freed
    memory or not changes a CPU step's time, a meta step's more than a plain one's."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return resolved


def device_name(device: torch.device) -> str:
    """A human name for the machine: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from mwnet.machine import cpu_model

    return cpu_model()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """A ready-to-run mode. ``run()`` takes ``steps`` optimizer steps (K for interval modes,
    so that every call contains exactly one meta update and times are per-step averages)."""

    spec: ModeSpec
    run: Callable[[], None]
    steps: int


def make_runner(
    spec: ModeSpec,
    model: torch.nn.Module,
    batches: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> Runner:
    """Optimizers and the step closure for one mode, on a model the runner now owns."""
    x, y, x_meta, y_meta = batches
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    if spec.hypergrad is None:
        forward = torch.compile(model) if spec.compile else model

        def plain_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(forward(x), y).backward()
            optimizer.step()

        return Runner(spec, plain_step, 1)

    weight_net = WeightNet().to(x.device)
    reweighter = MetaReweighter(
        model,
        optimizer,
        weight_net,
        hypergrad=spec.hypergrad,  # type: ignore[arg-type]
        partial=None if spec.cut is None else modules_from(model, spec.cut),
        famus=None if spec.famus is None else LayerSampling(sampling=spec.famus),  # type: ignore[arg-type]
        meta_interval=spec.meta_interval,
        low_memory=spec.low_memory,
        compile=spec.compile,
    )

    def mwnet_steps() -> None:
        for _ in range(spec.meta_interval):
            reweighter.step(x, y, x_meta, y_meta)

    return Runner(spec, mwnet_steps, spec.meta_interval)


def make_inputs(
    config: StepBenchConfig, device: torch.device
) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The seeded model and random batches: the same in the parent and in every subprocess."""
    torch.manual_seed(config.seed)
    name, options = bench_model(config.model)
    shape = input_shape(name)
    model = build(name, config.num_classes, in_channels=shape[0], **options).to(device)
    gen = torch.Generator().manual_seed(config.seed + 1)
    x = torch.randn(config.batch, *shape, generator=gen)
    y = torch.randint(0, config.num_classes, (config.batch,), generator=gen)
    x_meta = torch.randn(config.meta_batch, *shape, generator=gen)
    y_meta = torch.randint(0, config.num_classes, (config.meta_batch,), generator=gen)
    return model, tuple(t.to(device) for t in (x, y, x_meta, y_meta))  # type: ignore[return-value]


def time_modes(
    runners: list[Runner], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per step for each mode, ``repeats`` samples after ``warmup`` rounds."""
    times: dict[str, list[float]] = {r.spec.name: [] for r in runners}
    for round_ in range(warmup + repeats):
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            _sync(device)
            start = time.perf_counter()
            runner.run()
            _sync(device)
            elapsed = (time.perf_counter() - start) / runner.steps
            if round_ >= warmup:
                times[runner.spec.name].append(elapsed)
    return times


def cuda_peak_bytes(runner: Runner, device: torch.device) -> int:
    """Extra CUDA memory one call of ``runner`` allocates above what was allocated before."""
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    runner.run()
    _sync(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


def cpu_peak_bytes(config: StepBenchConfig, specs: list[ModeSpec]) -> dict[str, int | None]:
    """Peak extra RSS per mode, each from its own fresh subprocess (run concurrently: a
    process's RSS is its own, and the parent's timing is already done)."""
    if sys.platform == "win32":  # no getrusage: leave memory unmeasured
        return {spec.name: None for spec in specs}
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    if config.live_memory:
        env[MMAP_THRESHOLD_ENV] = str(LIVE_MMAP_THRESHOLD)
    procs = {}
    for spec in specs:
        cmd = [
            sys.executable, "-m", "mwnet.bench.step_memory",
            "--model", config.model,
            "--batch", str(config.batch),
            "--meta-batch", str(config.meta_batch),
            "--mode", base_mode(spec),
            "--meta-interval", str(spec.meta_interval),
            "--threads", str(torch.get_num_threads()),
            "--num-classes", str(config.num_classes),
            "--seed", str(config.seed),
        ]  # fmt: skip
        procs[spec.name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    peaks: dict[str, int | None] = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement for {name!r} failed:\n{err.strip()}")
        peaks[name] = json.loads(out)["peak_bytes"]
    return peaks


def base_mode(spec: ModeSpec) -> str:
    """The mode name of ``spec`` without its interval suffix (what ``--modes`` takes)."""
    if spec.hypergrad is None:
        return PLAIN
    cut = "" if spec.cut is None else f"{CUT_SEPARATOR}{spec.cut}"
    top = TOP_SUFFIX if spec.famus == "top" else ""
    return spec.hypergrad + (LOW_MEMORY_SUFFIX if spec.low_memory else "") + top + cut


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_step_bench(config: StepBenchConfig) -> list[BenchRow]:
    """Run the benchmark described by ``config``; one row per mode, ``plain`` first.

    ``config.threads`` sets torch's CPU thread count for the run only; it is restored after.
    """
    if config.repeats < 1 or config.warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config)
    finally:
        torch.set_num_threads(threads_before)


def _run(config: StepBenchConfig) -> list[BenchRow]:
    device = resolve_device(config.device)
    specs = mode_specs(config.modes, config.meta_interval, config.compile, config.cuts)
    model, batches = make_inputs(config, device)
    runners = [make_runner(spec, copy.deepcopy(model), batches) for spec in specs]
    del model
    load_before = load_average()
    times = time_modes(runners, device, config.repeats, config.warmup)
    loads = None if load_before is None else [load_before, load_average()]

    peaks: dict[str, int | None] = {s.name: None for s in specs}
    if config.memory:
        if device.type == "cuda":
            peaks = {r.spec.name: cuda_peak_bytes(r, device) for r in runners}
        else:  # the compiler's own memory would swamp a compiled step's: not measured
            peaks.update(cpu_peak_bytes(config, [s for s in specs if not s.compile]))

    def quantile(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=4, method="inclusive")[q] if len(xs) > 1 else xs[0]

    name = device_name(device)
    measure = None
    if config.memory:
        measure = "cuda-allocated" if device.type == "cuda" else "cpu-rss"
        measure += "-live" if config.live_memory and device.type != "cuda" else ""
    rows = []
    for spec in specs:
        baseline = PLAIN + (COMPILE_SUFFIX if spec.compile else "")
        plain_median, plain_peak = statistics.median(times[baseline]), peaks[baseline]
        median = statistics.median(times[spec.name])
        peak = peaks[spec.name]
        rows.append(
            BenchRow(
                mode=spec.name,
                model=config.model,
                batch=config.batch,
                meta_batch=config.meta_batch,
                hypergrad=spec.hypergrad,
                meta_interval=spec.meta_interval,
                low_memory=spec.low_memory,
                compiled=spec.compile,
                repeats=config.repeats,
                median_ms=median * 1e3,
                p25_ms=quantile(times[spec.name], 0) * 1e3,
                p75_ms=quantile(times[spec.name], 2) * 1e3,
                ratio_to_plain=median / plain_median,
                peak_mem_mb=None if peak is None else peak / 2**20,
                peak_mem_ratio=None if peak is None or not plain_peak else peak / plain_peak,
                memory_measure=measure,
                device=device.type,
                device_name=name,
                torch_version=torch.__version__,
                threads=torch.get_num_threads(),
                load_average=loads,
                allocator=allocator_note(),
            )
        )
    return rows


def rows_to_json(rows: list[BenchRow]) -> str:
    """The ``--json`` output: a list of objects, one per mode."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def format_table(rows: list[BenchRow], warmup: int) -> str:
    """A human-readable table with the machine it was measured on."""
    first = rows[0]
    lines = [
        f"mwnet bench step: {first.model}, batch {first.batch}, meta batch {first.meta_batch}, "
        f"median of {first.repeats} steps after {warmup} warm-up rounds",
        f"machine: {first.device} ({first.device_name}), torch {first.torch_version}, "
        f"threads {first.threads}{_load_text(first.load_average)}"
        + (f", {first.allocator}" if first.allocator and first.device == "cpu" else ""),
        "",
        f"{'mode':<32}{'median ms':>10}{'x plain':>9}{'peak MB':>10}{'x plain':>9}",
    ]
    if first.memory_measure:
        lines.insert(2, f"peak memory: {MEASURES.get(first.memory_measure, first.memory_measure)}")
    if any(r.compiled for r in rows):
        lines.insert(
            2,
            "(+compile rows: ratios to plain+compile; peak memory of compiled modes "
            "is measured on CUDA only)",
        )
    for r in rows:
        peak = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}"
        mem_ratio = "-" if r.peak_mem_ratio is None else f"{r.peak_mem_ratio:.2f}"
        lines.append(
            f"{r.mode:<32}{r.median_ms:>10.1f}{r.ratio_to_plain:>9.2f}{peak:>10}{mem_ratio:>9}"
        )
    return "\n".join(lines)


MEASURES = {
    "cuda-allocated": "extra max_memory_allocated during a step",
    "cpu-rss": "extra peak RSS of a fresh process (allocator's retained heap included)",
    "cpu-rss-live": f"extra peak RSS with {MMAP_THRESHOLD_ENV}={LIVE_MMAP_THRESHOLD} "
    "(tracks live tensors)",
}


def _load_text(loads: list[float] | None) -> str:
    if not loads:
        return ""
    return f", load average {loads[0]:.2f} before, {loads[-1]:.2f} after"
