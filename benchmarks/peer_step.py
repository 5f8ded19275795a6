"""One MW-Net iteration written with mwnet and with its peers, side by side.

The iteration (Shu et al., 2019, as the authors implement it): per-sample cross-entropy
L_i(θ); weights w_i = V(L_i; Θ) from the 1-100-1 weighting net; a virtual plain-SGD step
θ̂ = θ − α ∇_θ (1/n) Σ w_i L_i; the meta loss (cross-entropy of the meta batch at θ̂); an
Adam step of the weighting net on ∂L_meta/∂Θ; then the real SGD step (momentum 0.9,
weight decay 5e-4) on (1/n) Σ w_i L_i with the updated weighting net. Written as a user
would write it with

* mwnet: ``MetaReweighter(..., hypergrad="fast")`` and ``"reverse"``;
* ``torch.func``: ``functional_call`` and ``grad`` (the virtual step a dict comprehension);
* ``higher``: ``innerloop_ctx`` with a plain SGD optimizer for the virtual step;
* Betty (``betty-ml``): its Meta-Weight-Net example (``examples/learning_to_reweight``:
  two ``ImplicitProblem``s, the "darts" hypergradient), with ``roll_back=True`` so that
  the classifier's real step comes after the weighting net's, as in MW-Net (without it
  Betty takes the real step first and differentiates at the new parameters).

Each is timed per step as a multiple of a plain SGD step (cross-entropy, one forward and
one backward) measured in the same process, all rounds interleaved (every implementation
once per round, in a rotating order), median over the rounds; and its weighting net and
model after one iteration from the same float64 state are compared with mwnet's ``fast``
(the largest absolute difference of any parameter).

Models: ResNet-32 (3x32x32) and the 784-256-10 MLP (1x28x28) from ``mwnet.models``,
batch 100 and meta batch 100 of seeded random inputs and labels, 10 classes.

The peers are installed here, when this script runs (never on import), with
``pip install --no-deps`` so that torch stays as it is (the script stops if torch's
version changes); a peer that fails to install or to run is reported with its error.
Not run by the tests. Usage (one thread, as the figures in docs/PERFORMANCE.md)::

    OMP_NUM_THREADS=1 python benchmarks/peer_step.py --repeats 3 --warmup 1
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import itertools
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mwnet import MetaReweighter, WeightNet
from mwnet.machine import cpu_model
from mwnet.models import build, input_shape

LR, MOMENTUM, DECAY = 0.1, 0.9, 5e-4
"""The classifier's SGD (the paper's ResNet-32 settings); the virtual step is plain SGD."""
V_LR, V_DECAY = 1e-3, 1e-4
"""The weighting net's Adam (the authors' flip-noise setting, mwnet's default)."""
BATCH = META_BATCH = 100
CLASSES = 10
PEERS = {"higher": "higher", "betty": "betty-ml"}
"""Import name -> the PyPI package that provides it."""
MODELS = {"resnet32": "ResNet-32", "mlp": "MLP 784-256-10"}


def torch_version() -> str:
    """torch's version as a fresh interpreter sees it (after any pip install)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def install_peers(install: bool) -> dict[str, str]:
    """Install the peers that are missing (``pip install --no-deps``); the text of what
    went wrong, per peer that cannot be imported afterwards."""
    before = torch_version()
    problems = {}
    for module, package in PEERS.items():
        if importlib.util.find_spec(module) is None and install:
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", package]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                problems[module] = f"pip install --no-deps {package}: " + _last_lines(done.stderr)
                continue
        try:
            importlib.invalidate_caches()
            importlib.import_module(module)
        except Exception as err:  # a peer that does not import is a result, not a crash
            problems[module] = f"import {module}: {type(err).__name__}: {err}"
    after = torch_version()
    if after != before:
        raise SystemExit(f"installing the peers changed torch from {before} to {after}")
    return problems


def _last_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


@dataclass
class Setup:
    """The starting state every implementation copies, and the batches."""

    model: nn.Module
    weight_net: nn.Module
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_setup(name: str, dtype: torch.dtype, seed: int = 0) -> Setup:
    torch.manual_seed(seed)
    shape = input_shape(name)
    model = build(name, CLASSES, in_channels=shape[0]).to(dtype).train()
    weight_net = WeightNet().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, *shape, generator=g).to(dtype)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    xm = torch.randn(META_BATCH, *shape, generator=g).to(dtype)
    ym = torch.randint(0, CLASSES, (META_BATCH,), generator=g)
    return Setup(model, weight_net, (x, y, xm, ym))


def _optimizers(model: nn.Module, weight_net: nn.Module):
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    adam = torch.optim.Adam(weight_net.parameters(), lr=V_LR, weight_decay=V_DECAY)
    _OPTIMIZERS.setdefault(id(weight_net), []).append(adam)
    return sgd, adam


def _real_step(model, weight_net, optimizer, x, y) -> None:
    """The real update with the (updated) weighting net, shared by the hand-written peers."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    with torch.no_grad():
        w = weight_net(losses.detach().unsqueeze(1)).squeeze(1)
    optimizer.zero_grad()
    (w * losses).mean().backward()
    optimizer.step()


Step = Callable[[], None]


def plain(model: nn.Module, weight_net: nn.Module, batch) -> Step:
    x, y, _, _ = batch
    optimizer, _ = _optimizers(model, weight_net)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def mwnet_mode(hypergrad: str) -> Callable[[nn.Module, nn.Module, tuple], Step]:
    def make(model: nn.Module, weight_net: nn.Module, batch) -> Step:
        optimizer, adam = _optimizers(model, weight_net)
        rw = MetaReweighter(
            model, optimizer, weight_net, adam, normalize="mean", hypergrad=hypergrad
        )
        return lambda: rw.step(*batch)

    return make


def torch_func(model: nn.Module, weight_net: nn.Module, batch) -> Step:
    from torch.func import functional_call, grad

    x, y, xm, ym = batch
    optimizer, adam = _optimizers(model, weight_net)

    def weighted_loss(params, v_params, buffers):
        losses = F.cross_entropy(
            functional_call(model, (params, buffers), (x,)), y, reduction="none"
        )
        w = functional_call(weight_net, v_params, (losses.detach().unsqueeze(1),)).squeeze(1)
        return (w * losses).mean()

    def meta_loss(v_params, params, buffers):
        g = grad(weighted_loss)(params, v_params, buffers)
        virtual = {k: params[k] - LR * g[k] for k in params}
        return F.cross_entropy(functional_call(model, (virtual, buffers), (xm,)), ym)

    def step() -> None:
        params = {k: p.detach() for k, p in model.named_parameters()}
        v_params = {k: p.detach() for k, p in weight_net.named_parameters()}
        buffers = {k: b.clone() for k, b in model.named_buffers()}  # virtual BN statistics
        v_grads = grad(meta_loss)(v_params, params, buffers)
        for k, p in weight_net.named_parameters():
            p.grad = v_grads[k]
        adam.step()
        _real_step(model, weight_net, optimizer, x, y)

    return step


def higher_peer(model: nn.Module, weight_net: nn.Module, batch) -> Step:
    import higher

    x, y, xm, ym = batch
    optimizer, adam = _optimizers(model, weight_net)
    virtual = torch.optim.SGD(model.parameters(), lr=LR)  # the paper's plain virtual step

    def step() -> None:
        with higher.innerloop_ctx(model, virtual) as (fmodel, diffopt):
            losses = F.cross_entropy(fmodel(x), y, reduction="none")
            w = weight_net(losses.detach().unsqueeze(1)).squeeze(1)
            diffopt.step((w * losses).mean())
            meta = F.cross_entropy(fmodel(xm), ym)
            adam.zero_grad()
            meta.backward(inputs=list(weight_net.parameters()))
        adam.step()
        _real_step(model, weight_net, optimizer, x, y)

    return step


def betty_peer(model: nn.Module, weight_net: nn.Module, batch) -> Step:
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    x, y, xm, ym = batch
    optimizer, adam = _optimizers(model, weight_net)

    class Outer(ImplicitProblem):
        def forward(self, losses):
            return self.module(losses)

        def training_step(self, meta_batch):
            inputs, labels = meta_batch
            return F.cross_entropy(self.inner(inputs), labels.long())

    class Inner(ImplicitProblem):
        def forward(self, inputs):
            return self.module(inputs)

        def training_step(self, train_batch):
            inputs, labels = train_batch
            losses = F.cross_entropy(self.forward(inputs), labels.long(), reduction="none")
            w = self.outer(losses.reshape(-1, 1).detach())
            return torch.mean(w * losses.reshape(-1, 1))

    device = "cpu"
    outer = Outer(
        name="outer",
        config=Config(type="darts", retain_graph=True),
        module=weight_net,
        optimizer=adam,
        train_data_loader=itertools.repeat((xm, ym)),
        device=device,
    )
    inner = Inner(
        name="inner",
        config=Config(type="darts", unroll_steps=1),
        module=model,
        optimizer=optimizer,
        train_data_loader=itertools.repeat((x, y)),
        device=device,
    )
    engine = Engine(
        config=EngineConfig(train_iters=1, valid_step=10**9, roll_back=True),
        problems=[outer, inner],
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )
    engine.train()

    def step() -> None:
        engine.global_step += 1
        engine.train_step()

    return step


IMPLEMENTATIONS: dict[str, tuple[Callable[[nn.Module, nn.Module, tuple], Step], str | None]] = {
    "plain SGD step": (plain, None),
    "mwnet fast": (mwnet_mode("fast"), None),
    "mwnet reverse": (mwnet_mode("reverse"), None),
    "torch.func": (torch_func, None),
    "higher": (higher_peer, "higher"),
    "Betty (darts, roll_back)": (betty_peer, "betty"),
}
"""Name -> (builder, the peer module it needs)."""
REFERENCE = "mwnet fast"


@dataclass
class Row:
    model: str
    name: str
    ratio: float | None = None
    median_ms: float | None = None
    gradient_diff: float | None = None
    """Largest |difference| of the weighting net's gradient (the hypergradient) from the
    reference's, relative to the reference's largest entry."""
    gradient_ratio: float | None = None
    """‖hypergradient‖ / ‖the reference's‖."""
    gradient_cosine: float | None = None
    """The cosine of the angle between the hypergradient and the reference's."""
    weight_net_diff: float | None = None
    model_diff: float | None = None
    note: str = ""


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a, b, strict=True))


def _build(name: str, setup: Setup) -> tuple[Step, nn.Module, nn.Module, list]:
    """The implementation's step on copies of the starting state, and a list that
    receives the weighting net's gradients each time its optimizer steps (whoever calls
    it: mwnet, the hand-written peers, or Betty's engine)."""
    make, _ = IMPLEMENTATIONS[name]
    model, weight_net = copy.deepcopy(setup.model), copy.deepcopy(setup.weight_net)
    step = make(model, weight_net, setup.batch)
    seen: list[list[torch.Tensor]] = []
    params = list(weight_net.parameters())

    def record(optimizer, args, kwargs) -> None:
        seen.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])

    for optimizer in _OPTIMIZERS.pop(id(weight_net), []):
        optimizer.register_step_pre_hook(record)
    return step, model, weight_net, seen


_OPTIMIZERS: dict[int, list[torch.optim.Optimizer]] = {}
"""The weighting-net optimizers :func:`_optimizers` made, by the net's id, for
:func:`_build` to watch."""


def differences(model_name: str, names: list[str], rows: dict[str, Row]) -> None:
    """One iteration of each from the same float64 state, against ``REFERENCE``."""
    setup = make_setup(model_name, torch.float64)
    ends = {}
    for name in names:
        try:
            step, model, weight_net, grads = _build(name, setup)
            step()
            ends[name] = (model, weight_net, grads)
        except Exception as err:
            rows[name].note = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            traceback.print_exc(file=sys.stderr)
    ref_model, ref_net, ref_grads = ends[REFERENCE]
    scale = max(float(g.abs().max()) for g in ref_grads[0])
    for name, (model, weight_net, grads) in ends.items():
        if name == "plain SGD step":
            continue
        if len(grads) != 1:
            rows[name].note += f" the weighting net stepped {len(grads)} times"
        else:
            rows[name].gradient_diff = _max_diff(grads[0], ref_grads[0]) / scale
            mine = torch.cat([g.reshape(-1) for g in grads[0]])
            ref = torch.cat([g.reshape(-1) for g in ref_grads[0]])
            rows[name].gradient_ratio = float(mine.norm() / ref.norm())
            rows[name].gradient_cosine = float(mine @ ref / (mine.norm() * ref.norm()))
        rows[name].weight_net_diff = _max_diff(
            list(weight_net.parameters()), list(ref_net.parameters())
        )
        rows[name].model_diff = _max_diff(list(model.parameters()), list(ref_model.parameters()))


def timings(model_name: str, names: list[str], rows: dict[str, Row], repeats: int, warmup: int):
    """Seconds per step, all implementations interleaved round-robin (float32)."""
    setup = make_setup(model_name, torch.float32)
    steps = {}
    for name in names:
        if rows[name].note:
            continue
        steps[name] = _build(name, setup)[0]
    order = list(steps)
    times: dict[str, list[float]] = {n: [] for n in order}
    for round_ in range(warmup + repeats):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            steps[name]()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    plain_median = statistics.median(times["plain SGD step"])
    for name in order:
        median = statistics.median(times[name])
        rows[name].median_ms = median * 1e3
        rows[name].ratio = median / plain_median


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    head = "| model | implementation | x plain step | median ms | hypergradient, max rel. diff "
    head += "| hypergradient, norm ratio | hypergradient, cosine "
    head += "| weighting net, max abs diff | model, max abs diff | note |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ms = _fmt(r.median_ms, ".0f" if (r.median_ms or 0) >= 100 else ".1f")
        lines.append(
            f"| {MODELS[r.model]} | {r.name} | {_fmt(r.ratio, '.2f')} | "
            f"{ms} | {_fmt(r.gradient_diff, '.1e')} | {_fmt(r.gradient_ratio, '.2f')} | "
            f"{_fmt(r.gradient_cosine, '.4f')} | "
            f"{_fmt(r.weight_net_diff, '.1e')} | {_fmt(r.model_diff, '.1e')} | {r.note.strip()} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet32,mlp", help="comma list of resnet32, mlp")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--no-install", action="store_true", help="do not pip install missing peers"
    )
    parser.add_argument(
        "--no-timing", action="store_true", help="only the float64 differences (no timing)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problems = install_peers(not args.no_install)
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    for model_name in args.models.split(","):
        by_name = {name: Row(model_name, name) for name in IMPLEMENTATIONS}
        for name, (_, needs) in IMPLEMENTATIONS.items():
            if needs in problems:
                by_name[name].note = problems[needs]
        names = [n for n in IMPLEMENTATIONS if not by_name[n].note]
        print(f"{model_name}: one float64 iteration each...", file=sys.stderr)
        differences(model_name, names, by_name)
        if not args.no_timing:
            print(f"{model_name}: timing {args.warmup}+{args.repeats} rounds...", file=sys.stderr)
            timings(model_name, names, by_name, args.repeats, args.warmup)
        rows += list(by_name.values())
    versions = {m: _version(m) for m in ("torch", *PEERS)}
    print(
        f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    rounds = "no timing" if args.no_timing else f"median of {args.repeats} rounds"
    print(f"batch {BATCH}, meta batch {META_BATCH}; {rounds}")
    print(table(rows))
    return 0


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"betty": "betty-ml"}.get(module, module))
    except Exception:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
