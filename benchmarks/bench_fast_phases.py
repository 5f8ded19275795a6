"""Where an MW-Net step's time goes: each pass of a ``fast`` (or ``partial``) step, timed
next to a plain step's forward and backward, interleaved in one process.

The passes are timed by wrapping the functions that run them (the module's forward, the
three ``torch.autograd.grad`` calls of the hypergradient, the meta loss, the JVP), so the
step itself is the library's, unchanged. Medians over ``--repeats`` rounds, one thread.

    PYTHONPATH=src python benchmarks/bench_fast_phases.py --model resnet32 --repeats 8
    PYTHONPATH=src python benchmarks/bench_fast_phases.py --hypergrad partial
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import mwnet.core.hypergrad as hypergrad
from mwnet.bench.step import StepBenchConfig, make_inputs
from mwnet.core import MetaReweighter, WeightNet
from mwnet.machine import allocator_note, keep_freed_memory

GRADS = ("virtual-step gradient (first-order backward)", "meta backward", "weighting net")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--hypergrad", default="fast", choices=("fast", "partial"))
    parser.add_argument("--partial", default=None, help="the top, for --hypergrad partial")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as ``mwnet bench step`` and every ``mwnet`` command do
    torch.set_num_threads(1)
    model, (x, y, x_meta, y_meta) = make_inputs(
        StepBenchConfig(model=args.model), torch.device("cpu")
    )
    plain_model = copy.deepcopy(model)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    kw = {"partial": args.partial} if args.hypergrad == "partial" else {}
    rw = MetaReweighter(model, opt, WeightNet(), hypergrad=args.hypergrad, **kw)
    times: dict[str, list[float]] = defaultdict(list)
    current: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def timed(name: str):
        start = time.perf_counter()
        yield
        current[name] += time.perf_counter() - start

    grad, calls = torch.autograd.grad, [0]

    def counted_grad(*a, **k):
        name = GRADS[min(calls[0], len(GRADS) - 1)]
        calls[0] += 1
        with timed(name):
            return grad(*a, **k)

    jvp = hypergrad._loss_jvp

    def timed_jvp(problem, tangents):
        with timed("JVP (forward mode)"):
            return jvp(problem, tangents)

    problem_of = rw._problem

    def timed_problem(*a, **k):
        problem = problem_of(*a, **k)
        meta_loss_at = problem.meta_loss_at

        def timed_meta(theta):
            with timed("meta forward at θ̂"):
                return meta_loss_at(theta)

        problem.meta_loss_at = timed_meta
        return problem

    forward = rw._forward

    def timed_forward(inputs):
        with timed("training forward"):
            return forward(inputs)

    hypergrad._loss_jvp, rw._problem, rw._forward = timed_jvp, timed_problem, timed_forward

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        with timed("plain forward"):
            loss = F.cross_entropy(plain_model(x), y)
        with timed("plain backward"):
            loss.backward()
        plain_opt.step()

    def meta_step() -> None:
        calls[0] = 0
        torch.autograd.grad = counted_grad
        try:
            with timed("total"):
                rw.step(x, y, x_meta, y_meta)
        finally:
            torch.autograd.grad = grad

    load = [os.getloadavg()[0]]
    for round_ in range(args.warmup + args.repeats):
        for step in (plain_step, meta_step) if round_ % 2 else (meta_step, plain_step):
            current.clear()
            step()
            if round_ >= args.warmup:
                for name, seconds in current.items():
                    times[name].append(seconds)
    load.append(os.getloadavg()[0])
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    plain = median["plain forward"] + median["plain backward"]
    total = median["total"]
    named = [k for k in median if k not in ("total", "plain forward", "plain backward")]
    rest = total - sum(median[k] for k in named)
    print(
        f"{args.hypergrad} step, {args.model}, batch 100 + meta batch 100, 1 thread, median of "
        f"{args.repeats}; load average {load[0]:.2f} before, {load[1]:.2f} after; "
        f"{allocator_note()}"
    )
    forward, backward = median["plain forward"], median["plain backward"]
    print(f"plain forward {forward:.0f} ms, backward {backward:.0f} ms")
    print(f"{'phase':<48}{'ms':>8}{'share':>8}{'x plain':>9}")
    for name in [*named, "real backward, SGD step, the rest"]:
        ms = rest if name.startswith("real") else median[name]
        print(f"{name:<48}{ms:>8.0f}{ms / total:>8.0%}{ms / plain:>9.2f}")
    print(f"{'total':<48}{total:>8.0f}{1:>8.0%}{total / plain:>9.2f}")


if __name__ == "__main__":
    main()
