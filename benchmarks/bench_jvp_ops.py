"""What ``fast``'s JVP spends its time on, op by op, and one idea for it measured.

``--part profile``: ``torch.profiler`` around the JVP of one ``fast`` step (ResNet-32, batch
100 + meta batch 100, one thread, after two warm-up steps), the aten ops by self time: where
the round-three figures "the JVP's 31 batch norms: 49 ms before, 7 ms after" and "its 61
convolutions: about 200 ms" come from (run it at a commit before and after).

``--part fused-conv``: a convolution's tangent is conv(ẋ, W) + conv(x, Ẇ); the same sum is
one convolution over concatenated channels, conv([ẋ, x], [W, Ẇ]). Both timed at ResNet-32's
three stage shapes (batch 100), the concatenation made inside and outside the timing.

    PYTHONPATH=src python benchmarks/bench_jvp_ops.py --part profile
    PYTHONPATH=src python benchmarks/bench_jvp_ops.py --part fused-conv
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import mwnet.core.hypergrad as hypergrad
from mwnet.bench.step import StepBenchConfig, make_inputs
from mwnet.core import MetaReweighter, WeightNet
from mwnet.machine import allocator_note, cpu_model, keep_freed_memory


def jvp_profile(rows: int) -> None:
    model, (x, y, x_meta, y_meta) = make_inputs(
        StepBenchConfig(model="resnet32"), torch.device("cpu")
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rw = MetaReweighter(model, opt, WeightNet(), hypergrad="fast")
    jvp, captured = hypergrad._loss_jvp, {}

    def profiled(problem, tangents):
        if "on" not in captured:
            return jvp(problem, tangents)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = jvp(problem, tangents)
        captured["prof"] = prof
        return out

    hypergrad._loss_jvp = profiled
    try:
        for _ in range(2):
            rw.step(x, y, x_meta, y_meta)
        captured["on"] = True
        rw.step(x, y, x_meta, y_meta)
    finally:
        hypergrad._loss_jvp = jvp
    print(captured["prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _ms(fn: Callable[[], object], repeats: int) -> float:
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def _stage_times(channels: int, side: int, repeats: int) -> tuple[float, ...]:
    """ms of one convolution, the tangent's two, the fused one, and the fused one with its
    concatenations, at one stage's shape."""
    x, x_t = torch.randn(2, 100, channels, side, side).unbind(0)
    w, w_t = torch.randn(2, channels, channels, 3, 3).unbind(0)
    both_x, both_w = torch.cat([x_t, x], 1), torch.cat([w, w_t], 1)
    return (
        _ms(lambda: F.conv2d(x, w, None, 1, 1), repeats),
        _ms(lambda: F.conv2d(x_t, w, None, 1, 1).add_(F.conv2d(x, w_t, None, 1, 1)), repeats),
        _ms(lambda: F.conv2d(both_x, both_w, None, 1, 1), repeats),
        _ms(lambda: F.conv2d(torch.cat([x_t, x], 1), torch.cat([w, w_t], 1), None, 1, 1), repeats),
    )


def fused_conv(repeats: int) -> None:
    print(f"{'shape':<22}{'one conv':>10}{'two convs':>11}{'fused':>8}{'fused+cat':>11}  (ms)")
    for channels, side in ((16, 32), (32, 16), (64, 8)):
        one, two, fused, fused_cat = _stage_times(channels, side, repeats)
        shape = f"100x{channels}x{side}x{side}"
        print(f"{shape:<22}{one:>10.2f}{two:>11.2f}{fused:>8.2f}{fused_cat:>11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("profile", "fused-conv"), default="profile")
    parser.add_argument("--rows", type=int, default=18, help="ops shown by --part profile")
    parser.add_argument("--repeats", type=int, default=20, help="timings of --part fused-conv")
    args = parser.parse_args()
    keep_freed_memory()  # as every ``mwnet`` command does
    torch.set_num_threads(1)
    print(f"{cpu_model()}, torch {torch.__version__}, 1 thread, {allocator_note()}")
    if args.part == "profile":
        jvp_profile(args.rows)
    else:
        fused_conv(args.repeats)


if __name__ == "__main__":
    main()
