"""One script for a machine with a GPU: is mwnet exact there, and what does a step cost?

    python benchmarks/gpu_check.py                        # CUDA: rows added for --budget (420 s)
    python benchmarks/gpu_check.py --device cpu --quick   # the same code paths, tiny, < 60 s

It prints one table, row by row as they are measured, and exits 1 if any check fails or
any row raises. What it runs, in this order (the checks first: they are cheap, and a wrong
number makes every timing moot):

1. ``exact``: on a tiny float64 conv-BN-linear net (``tests/core/nets.py``), after one real
   step (so the momentum buffer exists and the virtual step reads it), the hypergradients
   of ``fast``, ``famus`` with every layer kept and ``partial`` with every module as its
   top against ``reverse``, and ``partial`` cut at the classifier against ``head``: the
   pairs the library claims equal in exact arithmetic. The bound is
   :func:`rounding.assert_within_order_noise`'s: the reference rerun on the same samples
   in three other orders (every sum is the same sum then) measures this device's rounding
   of this computation. Each mode is also held to central differences of the meta loss
   along two random directions of the weighting net (the tolerance from
   :func:`rounding.central_difference_error`, with the third derivative measured by a
   wide stencil, as ``tests/methods/test_methods_mlc.py`` does).
2. ``step``: two MW-Net steps (``fast`` and ``reverse``) in float32 on the device and on
   the CPU, each against the same steps in float64 on the CPU. The device passes when its
   float32 error is within :data:`rounding.ORDER_FACTOR` times the CPU's own float32 error
   on the same tensor (or :data:`rounding.FLOOR_ULPS` float32 ulps of its largest entry):
   both evaluate the same sums with u = 2^-24 in different orders, and the CPU's distance
   from float64 is what that rounding amounts to for this computation. TF32 is switched
   off for this check (it rounds inputs to 10 bits: a precision choice, not an error);
   one ``info`` row reports the distance with PyTorch's default TF32 setting.
3. ``ranks``: with two or more GPUs, ``torchrun`` starts two processes (NCCL) that train a
   BatchNorm-free float64 MLP for three steps on half batches each (``fast`` and
   ``reverse``); the model and weighting net must equal one process's on the whole batches
   within the order noise (``tests/dist/dist_workers.py``, the CPU equivalence tests'
   runs). Skipped with a line otherwise (``--ranks-on-cpu`` runs it with gloo on the CPU).
4. ``cost``: :mod:`mwnet.bench.step`'s runners (ResNet-32 and WRN-28-10, batch 100 + meta
   batch 100) for plain, fast, reverse, famus, partial and head, timed interleaved
   (synchronised, warm-up rounds excluded), in float32, under bf16 autocast, compiled
   (the modes ``torch.compile`` supports: plain and fast) and compiled under bf16 autocast.
   "x plain" is the median step over the plain step of the same variant and model, in the
   same rounds; peak memory is ``max_memory_allocated`` above the allocation before a step
   (CUDA only), also as a ratio to plain. A time guard adds a block only when what it is
   expected to take fits in what is left of ``--budget``; a block left out prints a
   ``skipped`` row.

``--plant MODE`` perturbs that mode's hypergradient by one part in a million before the
comparisons: a run that does not then exit 1 would not catch a real bug either.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "tests" / "core")]
sys.path.insert(3, str(ROOT / "tests" / "dist"))

import torch  # noqa: E402
from nets import BnCnn, random_batches  # noqa: E402
from rounding import (  # noqa: E402
    FLOOR_ULPS,
    ORDER_FACTOR,
    assert_within_order_noise,
    central_difference_error,
    floor,
    order_noise,
    ulps,
)

import mwnet  # noqa: E402
from mwnet.bench.step import (  # noqa: E402
    Runner,
    StepBenchConfig,
    cuda_peak_bytes,
    device_name,
    make_inputs,
    make_runner,
    mode_spec,
    resolve_device,
    time_modes,
)
from mwnet.core.famus import LayerSampling  # noqa: E402

F64, F32 = torch.float64, torch.float32
IMAGE, CLASSES, N, M = (3, 8, 8), 5, 12, 10
PLANT_SIZE = 1e-6
"""The relative perturbation ``--plant`` adds: far below what a dropped term or a wrong
normaliser does (1e-3 and more, see tests/core), far above float64 rounding (1e-15)."""
COST_MODES = ("plain", "fast", "reverse", "famus", "partial", "head")
VARIANTS = ("fp32", "bf16", "compile", "compile+bf16")
FAILED = ("FAIL", "error")


@dataclass
class Row:
    section: str
    name: str
    value: str = ""
    bound: str = ""
    x_plain: str = ""
    mem_x: str = ""
    status: str = "ok"
    note: str = ""


HEADER = (
    f"{'section':<8}{'row':<40}{'value':>12}{'bound/peak':>12}{'x plain':>9}{'mem x':>7}  status"
)


def print_row(row: Row) -> None:
    note = f"  {row.note}" if row.note else ""
    print(
        f"{row.section:<8}{row.name:<40}{row.value:>12}{row.bound:>12}{row.x_plain:>9}"
        f"{row.mem_x:>7}  {row.status}{note}",
        flush=True,
    )


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


# ---------------------------------------------------------------- 1. hypergradients


@dataclass
class Problem:
    """The state every mode starts from: a float64 BnCnn after one real step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    weight_net: torch.nn.Module
    batch: tuple[torch.Tensor, ...]


def _problem(device: torch.device) -> Problem:
    torch.manual_seed(0)
    model = BnCnn().double().to(device)
    weight_net = mwnet.WeightNet(hidden=10).double().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
    warm = mwnet.MetaReweighter(
        model,
        optimizer,
        weight_net,
        torch.optim.SGD(weight_net.parameters(), lr=0.1),
        virtual_step="optimizer",
    )
    warm.step(*(t.to(device) for t in random_batches(IMAGE, CLASSES, F64, seed=1, n=N, m=M)))
    batch = tuple(t.to(device) for t in random_batches(IMAGE, CLASSES, F64, seed=2, n=N, m=M))
    return Problem(model, optimizer, weight_net, batch)


def _reweighter(problem: Problem, mode: str, **options) -> mwnet.MetaReweighter:
    """A reweighter of ``mode`` on copies of the problem's model, optimizer state and net."""
    model = copy.deepcopy(problem.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
    optimizer.load_state_dict(problem.optimizer.state_dict())
    return mwnet.MetaReweighter(
        model,
        optimizer,
        copy.deepcopy(problem.weight_net),
        hypergrad=mode,
        virtual_step="optimizer",
        **options,
    )


MODES: dict[str, tuple[str, dict]] = {
    "reverse": ("reverse", {}),
    "fast": ("fast", {}),
    "famus (all layers)": ("famus", {"famus": LayerSampling(layers=3)}),
    "partial (all)": ("partial", {"partial": "conv,bn,fc"}),
    "head": ("head", {}),
    "partial@fc": ("partial", {"partial": "fc"}),
}
PAIRS = (
    ("fast", "reverse"),
    ("famus (all layers)", "reverse"),
    ("partial (all)", "reverse"),
    ("partial@fc", "head"),
)
"""(mode, reference): the pairs that are one quantity in exact arithmetic."""


def _permuted(batch: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """The same samples in another order (training and meta batch shuffled apart)."""
    g = torch.Generator().manual_seed(seed)
    x, y, xm, ym = batch
    p, q = torch.randperm(len(y), generator=g), torch.randperm(len(ym), generator=g)
    return x[p.to(x.device)], y[p.to(y.device)], xm[q.to(xm.device)], ym[q.to(ym.device)]


def hypergradient_rows(device: torch.device, plant: str | None) -> list[Row]:
    problem = _problem(device)
    reweighters = {name: _reweighter(problem, *spec[:1], **spec[1]) for name, spec in MODES.items()}
    grads: dict[str, torch.Tensor] = {}
    reorderings: dict[str, list[torch.Tensor]] = {}
    for name, rw in reweighters.items():
        grads[name] = _flat(rw.meta_gradient(*problem.batch)[0]).cpu()
        if plant is not None and name.split(" ")[0] == plant:
            grads[name] = grads[name] * (1 + PLANT_SIZE)
        if any(name == ref for _, ref in PAIRS):
            reorderings[name] = [
                _flat(rw.meta_gradient(*_permuted(problem.batch, s))[0]).cpu() for s in (1, 2, 3)
            ]
    rows = []
    for name, ref in PAIRS:
        what = f"{name} vs {ref}"
        rows.append(_order_noise_row(what, grads[name], grads[ref], reorderings[ref]))
    rows += _finite_difference_rows(reweighters["fast"], problem, grads)
    return rows


def _order_noise_row(
    what: str, actual: torch.Tensor, reference: torch.Tensor, reorderings: list[torch.Tensor]
) -> Row:
    """Largest difference against :func:`rounding.assert_within_order_noise`'s bound."""
    distance = float((actual - reference).abs().max())
    bound = max(ORDER_FACTOR * order_noise(reference, reorderings), floor(reference))
    try:
        assert bool(reference.abs().max() > 0), "the reference is zero: nothing compared"
        assert_within_order_noise(actual, reference, reorderings, what)
        status, note = "ok", ("bitwise equal" if torch.equal(actual, reference) else "")
    except AssertionError as e:
        status, note = "FAIL", str(e)
    return Row("exact", what, f"{distance:.2e}", f"{bound:.2e}", status=status, note=note)


def _finite_difference_rows(
    rw: mwnet.MetaReweighter, problem: Problem, grads: dict[str, torch.Tensor]
) -> list[Row]:
    """⟨∂L_meta/∂Θ, d⟩ of every mode that claims the exact hypergradient against the
    central difference (f(h) − f(−h)) / 2h of f(t) = L_meta(θ̂(Θ + t·d))."""
    params = [p for p in rw.weight_net.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(4)
    rows = []
    for k in range(2):
        d = [torch.randn(p.shape, generator=g, dtype=F64).to(p.device) for p in params]
        norm = math.sqrt(sum(float((v * v).sum()) for v in d))
        d = [v / norm for v in d]

        def f(t: float, d=d) -> float:
            with torch.no_grad():
                for p, p0, v in zip(params, start, d, strict=True):
                    p.copy_(p0 + t * v)
            value = float(rw.meta_gradient(*problem.batch)[1])
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    p.copy_(p0)
            return value

        h, s = 1e-3, 0.01
        fd = (f(h) - f(-h)) / (2 * h)
        # |f'''| by a wide stencil (its value here is the same for s = 0.01 and 0.005, a
        # third of it at s = 0.05: f''' changes farther out), taken 10x; f is a few hundred
        # flops deep on this net, 1e4 roundings bound it (as the MLC meta-gradient test)
        third = abs(f(2 * s) - 2 * f(s) + 2 * f(-s) - f(-2 * s)) / (2 * s**3)
        tol = central_difference_error(h, abs(f(0)), 10 * third, F64, ops=10_000)
        direction = _flat([v.cpu() for v in d])
        for name in ("reverse", "fast", "famus (all layers)", "partial (all)"):
            got = float(grads[name] @ direction)
            ok = abs(got - fd) <= tol and abs(fd) > 100 * tol
            note = "" if ok else f"<g, d> = {got:.6e}, central difference {fd:.6e}"
            rows.append(
                Row(
                    "exact",
                    f"{name} vs central diff. {k + 1}",
                    f"{abs(got - fd):.2e}",
                    f"{tol:.2e}",
                    status="ok" if ok else "FAIL",
                    note=note,
                )
            )
    return rows


# ---------------------------------------------------------------- 2. one step, f32 vs f64


def _steps(device: torch.device, dtype: torch.dtype, mode: str) -> dict[str, torch.Tensor]:
    """Two MW-Net steps from the same seeded state; model and weighting net, float64 CPU.

    The weighting net steps by SGD, not Adam: Adam's first step is about lr·sign(g), which
    would turn a rounding-sized difference of a near-zero entry into a full step."""
    torch.manual_seed(0)
    model = BnCnn().to(dtype)
    weight_net = mwnet.WeightNet(hidden=10).to(dtype)
    model, weight_net = model.to(device), weight_net.to(device)
    rw = mwnet.MetaReweighter(
        model,
        torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4),
        weight_net,
        torch.optim.SGD(weight_net.parameters(), lr=0.1),
        hypergrad=mode,
        virtual_step="optimizer",
    )
    for seed in (1, 2):  # drawn in float64 and rounded: the same numbers in every dtype
        batch = random_batches(IMAGE, CLASSES, F64, seed=seed, n=N)
        rw.step(*(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in batch))
    state = {**model.state_dict(), **{f"v.{k}": v for k, v in weight_net.state_dict().items()}}
    return {k: v.detach().cpu().double() for k, v in state.items() if v.is_floating_point()}


@contextlib.contextmanager
def _tf32(enabled: bool):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def step_rows(device: torch.device) -> list[Row]:
    cpu = torch.device("cpu")
    rows = []
    for mode in ("fast", "reverse"):
        reference = _steps(cpu, F64, mode)
        cpu32 = _steps(cpu, F32, mode)
        with _tf32(False):
            dev32 = _steps(device, F32, mode)
        worst, worst_name, distance, bound, cpu_error = -1.0, "", 0.0, 0.0, 0.0
        for name, ref in reference.items():
            scale = float(ref.abs().max())
            e_cpu = float((cpu32[name] - ref).abs().max())
            e_dev = float((dev32[name] - ref).abs().max())
            b = max(ORDER_FACTOR * e_cpu, ulps(FLOOR_ULPS, scale, F32))
            if e_dev / b > worst:
                worst, worst_name, distance, bound, cpu_error = e_dev / b, name, e_dev, b, e_cpu
        status = "ok" if worst <= 1 else "FAIL"
        note = f"worst tensor {worst_name}: CPU f32 error {cpu_error:.2e}"
        rows.append(
            Row("step", f"{mode}: {device.type} f32 vs CPU f64", f"{distance:.2e}", f"{bound:.2e}",
                status=status, note=note)
        )  # fmt: skip
        if device.type == "cuda":
            with _tf32(True):
                tf32 = _steps(device, F32, mode)
            far = max(float((tf32[k] - r).abs().max() / r.abs().max().clamp_min(1e-30))
                      for k, r in reference.items())  # fmt: skip
            rows.append(
                Row("step", f"{mode}: cuda with TF32 vs CPU f64", f"{far:.2e}", "", status="info",
                    note="largest error relative to each tensor's scale; not checked")
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------- 3. two ranks


def rank_rows(device: torch.device, on_cpu: bool, timeout: float) -> list[Row]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2 and not on_cpu:
        why = f"{gpus} GPU(s) here; needs 2 (--ranks-on-cpu runs it with gloo)"
        return [Row("ranks", "2 ranks (NCCL) vs 1 process", status="skipped", note=why)]
    backend, where = ("nccl", "cuda") if gpus >= 2 else ("gloo", "cpu")
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += [str(Path(__file__).resolve()), "--rank-worker", out, "--backend", backend]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [Row("ranks", f"2 ranks ({backend})", status="error", note="timed out")]
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            return [Row("ranks", f"2 ranks ({backend})", status="error", note=tail[0])]
        ranks = [torch.load(Path(out) / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]
    from dist_workers import train

    one = torch.device("cuda:0") if where == "cuda" else torch.device("cpu")
    rows = []
    for case in _rank_cases():
        single = _to_cpu(train(case, None, device=one))
        reordered = [_to_cpu(train(case, None, order_seed=s, device=one)) for s in (1, 2, 3)]
        tensors = []
        for key in ("model", "weight_net"):
            for name, ref in single[key].items():
                actual = ranks[0][case.name][key][name]
                row = _order_noise_row(
                    f"{key}.{name}", actual, ref, [r[key][name] for r in reordered]
                )
                if not torch.equal(actual, ranks[1][case.name][key][name]):
                    row.status, row.note = "FAIL", f"{key}.{name}: the two ranks differ"
                tensors.append(row)
        # one row per case: its first failure, else the tensor nearest its bound
        worst = next((r for r in tensors if r.status != "ok"), None) or max(
            tensors, key=lambda r: float(r.value) / float(r.bound)
        )
        note = worst.note or f"nearest its bound: {worst.name}"
        rows.append(
            Row("ranks", f"{case.hypergrad}: 2 ranks ({backend}) vs 1, 3 steps", worst.value,
                worst.bound, status=worst.status, note=note)
        )  # fmt: skip
    return rows


def _rank_cases():
    from dist_workers import Case

    return [Case("mwnet-fast-sum"), Case("mwnet-reverse-sum", hypergrad="reverse")]


def _to_cpu(result: dict) -> dict:
    return {k: {n: t.cpu() for n, t in result[k].items()} for k in ("model", "weight_net")}


def rank_worker(out: str, backend: str) -> int:
    """One rank under torchrun: every case on this rank's half batches, saved to ``out``."""
    import torch.distributed as dist
    from dist_workers import train

    from mwnet.core.reducer import GradientReducer

    torch.set_num_threads(1)
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        cases = _rank_cases()
        results = {c.name: _to_cpu(train(c, GradientReducer(), device=device)) for c in cases}
        dist.barrier()  # no rank leaves while a peer still receives
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f"rank{dist_rank()}.pt")
    return 0


def dist_rank() -> int:
    return int(os.environ["RANK"])


# ---------------------------------------------------------------- 4. step cost


def _specs(variant: str):
    if variant.startswith("compile"):
        return [mode_spec("plain", compile=True), mode_spec("fast", compile=True)]
    return [mode_spec(m) for m in COST_MODES]


def _autocast_runner(runner: Runner, device: torch.device) -> Runner:
    """The runner with every call under bf16 autocast, as ``amp=bf16`` trains."""

    def run() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            runner.run()

    return Runner(runner.spec, run, runner.steps)


def cost_rows(
    device: torch.device, model_name: str, variant: str, batch: int, repeats: int, warmup: int
) -> list[Row]:
    config = StepBenchConfig(model=model_name, batch=batch, meta_batch=batch, device=device.type)
    model, batches = make_inputs(config, device)
    runners = [make_runner(spec, copy.deepcopy(model), batches) for spec in _specs(variant)]
    del model
    if variant.endswith("bf16"):
        runners = [_autocast_runner(r, device) for r in runners]
    times = time_modes(runners, device, repeats, warmup)
    peaks: dict[str, int] = {}
    if device.type == "cuda":
        peaks = {r.spec.name: cuda_peak_bytes(r, device) for r in runners}
    plain = runners[0].spec.name
    rows = []
    for r in runners:
        median = statistics.median(times[r.spec.name])
        ratio = median / statistics.median(times[plain])
        peak = peaks.get(r.spec.name)
        mem = "-" if peak is None or not peaks.get(plain) else f"{peak / peaks[plain]:.2f}"
        mode = r.spec.name.removesuffix("+compile")
        rows.append(
            Row(
                "cost",
                f"{model_name} {variant} {mode}",
                f"{median * 1e3:.1f} ms",
                "-" if peak is None else f"{peak / 2**20:.0f} MB",
                f"{ratio:.2f}",
                mem,
                status="info",
            )
        )
    return rows


@dataclass
class Guard:
    """Adds a block only when its expected duration fits in what is left of the budget."""

    start: float
    budget: float
    first_block: float
    """Expected duration of a model's first block, before anything of it was measured."""
    compile_extra: float
    """Expected compilation time of a compiled block, on top of its eager duration."""

    def __post_init__(self) -> None:
        self.measured: dict[str, float] = {}

    def expected(self, model: str, variant: str) -> float:
        eager = self.measured.get(model, self.first_block)
        return eager + (self.compile_extra if variant.startswith("compile") else 0.0)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def allows(self, model: str, variant: str) -> bool:
        return self.expected(model, variant) <= self.left()

    def record(self, model: str, variant: str, seconds: float) -> None:
        if variant == "fp32":
            self.measured[model] = seconds


def _guarded(section: str, what: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """``fn``'s rows, or one ``error`` row naming what it raised (the rest still runs)."""
    try:
        return fn()
    except Exception as e:
        return [Row(section, what, status="error", note=f"{type(e).__name__}: {e}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--budget", type=float, help="seconds (default 420; quick 45)")
    parser.add_argument("--models", default=None, help="comma list (default resnet32,wrn28_10)")
    parser.add_argument("--batch", type=int, help="batch and meta batch (default 100)")
    parser.add_argument("--variants", default=None, help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--plant",
        choices=("reverse", "fast", "famus", "partial", "head"),
        help="perturb this mode's hypergradient (the check must then fail)",
    )
    parser.add_argument("--ranks-on-cpu", action="store_true", help="the 2-rank check on gloo")
    parser.add_argument("--rank-worker", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="nccl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        return rank_worker(args.rank_worker, args.backend)

    start = time.monotonic()
    device = resolve_device(args.device)
    quick = args.quick
    budget = args.budget if args.budget is not None else (45.0 if quick else 420.0)
    models = (args.models or ("resnet32,wrn-10-1" if quick else "resnet32,wrn28_10")).split(",")
    variants = (args.variants or ("fp32,bf16" if quick else ",".join(VARIANTS))).split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    batch = args.batch or (4 if quick else 100)
    repeats = args.repeats or (2 if quick else 20)
    warmup = min(args.warmup, 1) if quick else args.warmup
    if device.type == "cpu":
        torch.set_num_threads(1)

    print(
        f"gpu_check: {device_name(device)} ({device.type}), torch {torch.__version__}, "
        f"budget {budget:.0f} s{', quick' if quick else ''}"
        f"{f', planted: {args.plant}' if args.plant else ''}",
        flush=True,
    )
    print(HEADER, flush=True)
    rows: list[Row] = []

    def emit(new: list[Row]) -> None:
        for row in new:
            print_row(row)
        rows.extend(new)

    emit(_guarded("exact", "hypergradients", lambda: hypergradient_rows(device, args.plant)))
    emit(_guarded("step", "f32 vs f64", lambda: step_rows(device)))
    emit(_guarded("ranks", "2 ranks vs 1", lambda: rank_rows(device, args.ranks_on_cpu, 180)))

    guard = Guard(start, budget, first_block=8.0 if quick else 60.0,
                  compile_extra=60.0 if quick else 150.0)  # fmt: skip
    for variant in variants:
        for model_name in models:
            name = f"{model_name} {variant}"
            if not guard.allows(model_name, variant):
                need = guard.expected(model_name, variant)
                note = f"time guard: {guard.left():.0f} s left, ~{need:.0f} s needed"
                emit([Row("cost", name, status="skipped", note=note)])
                continue
            began = time.monotonic()
            emit(_guarded("cost", name, lambda m=model_name, v=variant: cost_rows(
                device, m, v, batch, repeats, warmup)))  # fmt: skip
            guard.record(model_name, variant, time.monotonic() - began)

    failed = [r for r in rows if r.status in FAILED]
    elapsed = time.monotonic() - start
    verdict = f"{len(failed)} failed" if failed else "all checks passed"
    print(f"gpu_check: {verdict} ({len(rows)} rows, {elapsed:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
