"""``mwnet bench step`` and ``mwnet bench epoch``: the benchmarks' command line.

The measurements themselves are in :mod:`mwnet.bench.step` and :mod:`mwnet.bench.epoch`;
here only their arguments are wired, and the table or JSON printed.
"""

from __future__ import annotations

import argparse
import sys

from mwnet.argtypes import comma_list, positive_int, print_help_of


def _mode_list(text: str) -> tuple[str, ...]:
    from mwnet.bench.step import MODES

    return comma_list(MODES, "mode")(text)


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give a comma list of module names")
    return names


def _run_bench_step(args: argparse.Namespace) -> int:
    from mwnet.bench.step import (
        StepBenchConfig,
        format_table,
        mode_specs,
        rows_to_json,
        run_step_bench,
    )

    config = StepBenchConfig(
        model=args.model,
        batch=args.batch,
        meta_batch=args.meta_batch,
        repeats=args.repeats,
        warmup=args.warmup,
        modes=args.modes,
        cuts=args.cuts,
        meta_interval=args.meta_interval,
        device=args.device,
        threads=args.threads,
        memory=not args.no_memory,
        compile=args.compile,
        live_memory=args.live_memory,
    )
    n_modes = len(mode_specs(config.modes, config.meta_interval, config.compile, config.cuts))
    rounds = config.warmup + config.repeats
    print(f"timing {config.model}: {n_modes} modes x {rounds} rounds...", file=sys.stderr)
    rows = run_step_bench(config)
    print(rows_to_json(rows) if args.json else format_table(rows, config.warmup))
    return 0


def _variant_list(text: str) -> tuple[str, ...]:
    from mwnet.bench.epoch import VARIANTS
    from mwnet.suite.grid import METHOD_NAMES

    # with --suite, the suite's method names are variants too (its own cells)
    return comma_list((*VARIANTS, *METHOD_NAMES), "variant")(text)


def _run_bench_epoch(args: argparse.Namespace) -> int:
    from mwnet.bench.epoch import (
        EpochBenchConfig,
        format_table,
        rows_to_json,
        run_epoch_bench,
        variant_overrides,
    )

    config = EpochBenchConfig(
        preset=args.preset,
        variants=args.variants,
        meta_interval=args.meta_interval,
        subset=args.subset,
        model=args.model,
        repeats=args.repeats,
        warmup_steps=args.warmup_steps,
        threads=args.threads,
        device=args.device,
        overrides=tuple(args.overrides),
        suite_setting=args.suite,
    )
    n = len(variant_overrides(config.variants, config.meta_interval, config.suite_setting))
    what = f"the suite's {args.suite} cells" if args.suite else f"{config.subset or 5000} images"
    print(
        f"timing one epoch of {what}: {n} variants x {config.repeats} round(s)...",
        file=sys.stderr,
    )
    rows = run_epoch_bench(config)
    print(rows_to_json(rows) if args.json else format_table(rows))
    return 0


def _add_bench_epoch(benches) -> None:
    from mwnet.suite.grid import SETTING_NAMES

    epoch = benches.add_parser(
        "epoch",
        help="wall time of one training epoch on Fashion-MNIST, ce vs MW-Net",
        description="Wall time of one training epoch (the training loop's own, no "
        "evaluation) per method variant, in one process, with ratios to plain "
        "cross-entropy. Reads the data from disk (apt-get install dataset-fashion-mnist), "
        "never downloads.",
    )
    epoch.add_argument("--preset", default="fmnist-flip2-40", help="base preset")
    epoch.add_argument(
        "--suite",
        choices=SETTING_NAMES,
        default=None,
        metavar="SETTING",
        help="time the evidence suite's cells of this setting (seed 0: its model and training "
        "images, e.g. the MLP on 12,000, the cnn-* settings' small CNN on 6,000) instead of "
        "--preset's; --variants may then name suite methods (mwnet-fast, ...). "
        f"Settings: {', '.join(SETTING_NAMES)}",
    )
    epoch.add_argument(
        "--variants",
        type=_variant_list,
        default=("ce", "fast", "head"),
        help="comma list of ce,fast,fast+lowmem,head,partial,cmwnet,frozen (default "
        "ce,fast,head), or with --suite also suite method names",
    )
    epoch.add_argument(
        "--meta-interval",
        type=positive_int,
        default=5,
        metavar="K",
        help="K > 1 also times fast and head with a weighting-net update every K steps "
        "(default 5; 1 to skip)",
    )
    epoch.add_argument(
        "--subset",
        type=positive_int,
        default=None,
        help="training images (default 5000; with --suite the setting's own, given: that "
        "many beside its validation split, for a quick try)",
    )
    epoch.add_argument("--model", default=None, help="model name (default: the preset's)")
    epoch.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="timed epochs each: round r is epoch r of every variant's run, so as many rounds "
        "as the run has epochs time a whole run ('x ce total')",
    )
    epoch.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    epoch.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    epoch.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    epoch.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    epoch.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every variant"
    )
    epoch.set_defaults(func=_run_bench_epoch)


def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure what MW-Net costs", description="Benchmarks.")
    bench.set_defaults(func=print_help_of(bench))
    benches = bench.add_subparsers(title="benchmarks", metavar="BENCHMARK")

    step = benches.add_parser(
        "step",
        help="time and peak memory of one training step, plain vs MW-Net",
        description="Median wall time and peak extra memory of a plain SGD step and of an "
        "MW-Net step per hypergradient mode, interleaved in one process, on random data.",
    )
    step.add_argument(
        "--model",
        default="resnet32",
        help="resnet32 (default, 3x32x32), wrn-D-W (e.g. wrn-16-2), cnn_small (1x28x28) or "
        "any registered model name",
    )
    step.add_argument("--batch", type=positive_int, default=100, help="training batch size")
    step.add_argument("--meta-batch", type=positive_int, default=100, help="meta batch size")
    step.add_argument("--repeats", type=positive_int, default=20, help="timed rounds")
    step.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    step.add_argument(
        "--modes",
        type=_mode_list,
        default=("plain", "reverse", "fast", "fast+lowmem", "head", "partial"),
        help="comma list of plain,reverse,fast,fast+lowmem,head,partial,famus,famus+top "
        "(default all but the famus ones; plain always runs: it is the baseline; fast+lowmem "
        "is fast with low_memory=True; partial the partial virtual step with the model's "
        "default top; famus the meta gradient through 4 layers drawn each step, famus+top "
        "through the 4 nearest the output)",
    )
    step.add_argument(
        "--cuts",
        type=_name_list,
        default=(),
        metavar="NAMES",
        help="comma list of module names (e.g. stage2,stage3.4,fc): each adds a row "
        "partial@NAME whose top begins at that module (it and every module registered "
        "after it)",
    )
    step.add_argument(
        "--meta-interval",
        type=positive_int,
        default=1,
        metavar="K",
        help="K > 1 also times '<mode>+interval(K)': a weighting-net update every K steps",
    )
    step.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    step.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    step.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    step.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    step.add_argument(
        "--live-memory",
        action="store_true",
        help="CPU: measure peak memory with glibc's mmap threshold fixed at 128 KiB, so that "
        "it follows live tensors instead of the allocator's retained heap",
    )
    step.add_argument(
        "--compile",
        action="store_true",
        help="also time plain+compile and the torch.compile'd variants of fast and fast+lowmem "
        "(compilation happens in the warm-up rounds)",
    )
    step.set_defaults(func=_run_bench_step)
    _add_bench_epoch(benches)
