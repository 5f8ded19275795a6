"""Subprocess entry point: peak extra CPU memory of one benchmark mode.

A process's peak RSS (``ru_maxrss``) never goes down, so comparing modes needs one fresh
process per mode. This one builds the same setup as :mod:`mwnet.bench.step`, notes the
resident memory, runs one warm-up and two measured calls, and prints
``{"peak_bytes": peak_rss - resident_before}`` as JSON: the extra memory a step needs
above the resident model and data. The warm-up stays inside the window on purpose: memory
freed by a step stays mapped by the allocator and would hide the next step's needs.
It also contains one-time costs that every mode pays alike (kernel code paged in, thread
pools, momentum buffers: some tens of MB), which matter only for tiny models.

Usage: ``python -m mwnet.bench.step_memory --model resnet32 --mode fast``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

import torch

from mwnet.bench.step import MODES, PLAIN, StepBenchConfig, make_inputs, make_runner, mode_spec
from mwnet.machine import keep_freed_memory


def _status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_bytes() -> int:
    """Current RSS (``VmRSS``); the peak so far where /proc is missing (macOS)."""
    current = _status_bytes("VmRSS")
    return peak_resident_bytes() if current is None else current


def peak_resident_bytes() -> int:
    """Peak RSS of this process image so far.

    Linux: ``VmHWM``, not ``getrusage().ru_maxrss``, because the kernel carries the
    parent's high-water mark across fork+exec into ``ru_maxrss``, so a child of a large
    benchmark process would report the parent's size. Elsewhere ``ru_maxrss`` (KiB on
    Linux, bytes on macOS).
    """
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def measure(config: StepBenchConfig, mode: str, calls: int = 3) -> int:
    """Peak extra bytes over ``calls`` calls of the mode's runner (the first is the warm-up)."""
    spec = mode_spec(mode, config.meta_interval)
    model, batches = make_inputs(config, torch.device("cpu"))
    runner = make_runner(spec, model, batches)
    gc.collect()
    before = resident_bytes()
    for _ in range(calls):
        runner.run()
    return max(0, peak_resident_bytes() - before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mwnet.bench.step_memory")
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--mode", default=PLAIN, help=f"{', '.join(MODES)} or partial@MODULE")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=100)
    parser.add_argument("--meta-interval", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the timing process, the ``mwnet`` command, does
    if args.threads:
        torch.set_num_threads(args.threads)
    config = StepBenchConfig(
        model=args.model,
        batch=args.batch,
        meta_batch=args.meta_batch,
        meta_interval=args.meta_interval,
        num_classes=args.num_classes,
        seed=args.seed,
        device="cpu",
    )
    print(json.dumps({"peak_bytes": measure(config, args.mode)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
