"""``mwnet train | presets | eval | plot``: thin wrappers that print and exit cleanly."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mwnet.train.recipes import RECIPES

if TYPE_CHECKING:
    from mwnet.distributed import DataParallel


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="exact",
        help="exact: the paper's step (default); cheap: the head hypergradient, about 1.4x "
        "a plain step, chosen by the suite (docs/PERFORMANCE.md); overrides win over it",
    )


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with a preset (paper settings) and key=value overrides",
        description="Train with a preset and overrides, e.g. `mwnet train --preset "
        "fmnist-flip2-40 method.name=ce optim.epochs=5`. `mwnet presets` lists presets; "
        "any config key can be overridden (a wrong key lists the valid ones).",
    )
    p.add_argument("--preset", help="preset name (see `mwnet presets`)")
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="start from a saved config, e.g. another run's config.yaml (its name is dropped: "
        "the new run gets its own directory); overrides apply on top",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        type=Path,
        help="continue a run after its last finished epoch",
    )
    p.add_argument(
        "--allow-change",
        metavar="KEY",
        action="append",
        default=[],
        help="with --resume: continue although config.yaml changed KEY since the run "
        "started (repeatable or comma-separated); only keys that do not change what was "
        "trained may: optim.epochs, eval_train, data.root, device, threads, ... (README)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar: one log line per epoch")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config (what a run saves as RUN_DIR/config.yaml) and exit: "
        "nothing is trained and no run directory is made",
    )
    _add_recipe(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from mwnet import distributed
    from mwnet.config import load_config
    from mwnet.train import loop
    from mwnet.train.recipes import RECIPES

    if args.resume is not None:
        if args.preset or args.overrides or args.config or args.recipe != "exact":
            raise ValueError(
                "--resume takes no --preset, --config, --recipe or overrides: the run keeps its "
                "config. "
                f"To change a key that may change (e.g. optim.epochs), edit "
                f"{args.resume / loop.CONFIG} and add --allow-change KEY"
            )
        cfg = loop.run_config(args.resume)
    else:
        if args.allow_change:
            raise ValueError("--allow-change is for --resume RUN_DIR only; a new run has no past")
        if not args.preset and not args.overrides and not args.config:
            raise ValueError(
                "give --preset NAME (see `mwnet presets`), --config FILE and/or key=value overrides"
            )
        cfg = load_config(
            args.preset, args.overrides, base=args.config, defaults=RECIPES[args.recipe]
        )
    if args.show_config:  # before any directory is made or data read
        sys.stdout.write(loop.to_yaml(cfg))
        sys.stdout.flush()  # a closed pipe (| head) raises here, not at exit
        return 0
    if not distributed.launched_with_several_ranks():
        return _train(args, cfg, None)
    d = cfg.distributed
    parallel = distributed.start(cfg.device, d.backend, float(d.timeout))
    try:
        code = _train(args, cfg, parallel)
    except Exception as err:
        if not distributed.lost_contact(err):
            raise
        print(_lost_contact_message(parallel.rank, err), file=sys.stderr)
        return 1
    parallel.close()
    return code


def _one_line(trainer: Any) -> str:
    """What is about to train, in one line."""
    cfg, d = trainer.exp.cfg, trainer.exp.data
    if cfg.data.noise != "none":
        noise = f"{cfg.data.noise} noise {100 * cfg.data.noise_rate:g} %"
    elif d.realized_noise_rate is None:  # a user's own labels: their quality is unknown
        noise = "labels as given (noise unknown)"
    else:
        noise = "clean labels"
    meta = f", {len(d.meta_labels):,} trusted" if len(d.meta_labels) else ""
    samples = "rows" if d.feature_names is not None else "images"
    return (
        f"training {cfg.method.name} on {cfg.data.dataset} ({len(d.train_labels):,} {samples}, "
        f"{noise}{meta}), model {cfg.model.name}, {_epochs(trainer.exp.total_epochs)}, "
        f"on {trainer.exp.device}"
    )


def _lost_contact_message(rank: int, err: BaseException) -> str:
    """One line for a collective that failed: which rank noticed, and what to read next."""
    lines = str(err).strip().splitlines()
    detail = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(err).__name__
    detail = re.split(r"(?<=\.)\s", detail, maxsplit=1)[0]  # the first sentence
    return (
        f"mwnet: error: rank {rank} lost contact with the other ranks ({detail}): another "
        "rank failed or stopped responding; its own error is in its log and in torchrun's "
        "summary. Finished epochs are saved: continue with mwnet train --resume RUN_DIR"
    )


def _train(args: argparse.Namespace, cfg: Any, parallel: DataParallel | None) -> int:
    """Start or resume the run and train it; only rank 0 (or the only process) prints."""
    from mwnet.train import loop

    main = parallel is None or parallel.is_main
    if args.resume is not None:
        allow = tuple(args.allow_change)
        trainer = loop.resume(args.resume, quiet=args.quiet, parallel=parallel, allow_change=allow)
        if trainer.epoch >= trainer.exp.total_epochs and loop.finished(args.resume):
            trainer.close()
            if main:
                print(_already_finished(args.resume, trainer.epoch), file=sys.stderr)
            return 0
    else:
        trainer, _ = loop.start(cfg, quiet=args.quiet, parallel=parallel)
    try:
        if main:
            print(_starting(args, trainer, parallel), file=sys.stderr)
        summary = trainer.fit()
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a batch scheduler's stop)
        trainer.abandon()
        if main:
            print(f"\n{_stopped_message(trainer, stop)}", file=sys.stderr)
        return int(getattr(stop, "exit_code", 130))
    except BrokenPipeError as closed:  # `mwnet train ... 2>&1 | head`: the reader left
        trainer.abandon()
        closed.exit_code = 141  # stopped as by SIGPIPE, not a success; saved epochs resume
        raise
    finally:
        trainer.close()
    if not main:
        return 0
    print(_result_line(summary))
    run_dir = trainer.run_dir
    print(f"summary: {run_dir / 'summary.json'}", file=sys.stderr)
    pngs = sorted(run_dir.glob("*.png"))
    if pngs:
        print(f"plots:   {', '.join(str(p) for p in pngs)}", file=sys.stderr)
    return 0


def _starting(args: argparse.Namespace, trainer: Any, parallel: DataParallel | None) -> str:
    from mwnet.train import loop

    if args.resume is not None:
        ranks = f" on {parallel.world_size} ranks" if parallel is not None else ""
        return f"resuming {args.resume} after epoch {trainer.epoch}{ranks}"
    run_dir = trainer.run_dir
    return f"{_one_line(trainer)}\nrun directory: {run_dir} (config: {run_dir / loop.CONFIG})"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n:,} epochs"


def _result_line(summary: dict[str, Any]) -> str:
    """What a finished (or stopped) run came to, in one line for people; summary.json
    has every number."""
    done, total = summary["epochs_done"], summary["epochs_total"]
    parts = [f"{summary['method']}: {_epochs(done)}" + (f" of {total}" if done != total else "")]
    if summary.get("last_test_acc") is not None:
        parts.append(f"test accuracy {summary['last_test_acc']:.2f}%")
    if summary.get("best_epoch") is not None and summary["best_epoch"] != summary["last_epoch"]:
        parts.append(f"best {summary['best_test_acc']:.2f}% at epoch {summary['best_epoch']}")
    if summary.get("best_val_epoch") is not None:
        parts.append(
            f"at the best validation epoch ({summary['best_val_epoch']}) "
            f"{summary['test_acc_at_best_val']:.2f}%"
        )
    parts.append(f"{_seconds(summary['wall_time'])}")
    return ", ".join(parts)


def _seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _already_finished(run_dir: Path, epochs: int) -> str:
    from mwnet.train import loop

    return (
        f"{run_dir} is already finished ({_epochs(epochs)} trained, its files written); "
        f"nothing to do. To train it longer, raise optim.epochs in {run_dir / loop.CONFIG} "
        "and resume with --allow-change optim.epochs"
    )


def _stopped_message(trainer: Any, stop: KeyboardInterrupt) -> str:
    what = "stopped by SIGTERM" if getattr(stop, "exit_code", 130) != 130 else "interrupted"
    if not trainer.run_dir.exists():
        return f"{what} before the first epoch ended; nothing was saved"
    return (
        f"{what}; finished epochs are saved. Continue with: mwnet train --resume {trainer.run_dir}"
    )


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train several methods on the same data and show them side by side",
        description="Train each method with the same config (same data, split, noise and "
        "seed; only method.name differs), in parallel worker processes with one CPU thread "
        "each, then print a table of accuracy and cost and the label-issue report of the "
        "weighting run chosen without the test set (best validation accuracy with "
        "data.val_size, else the first listed). Runs go to OUT_DIR/<name>/<method>; running "
        "it again resumes unfinished runs and reads finished ones.",
    )
    p.add_argument("--preset", help="preset name (see `mwnet presets`)")
    p.add_argument("--config", metavar="FILE", type=Path, help="start from a saved config")
    from mwnet.argtypes import comma_list, non_negative_int, positive_int
    from mwnet.methods.registry import method_names

    p.add_argument(
        "--methods",
        type=comma_list(method_names(), "method"),
        default=("ce", "mwnet"),
        help="comma list, the first is the cost baseline (default ce,mwnet)",
    )
    p.add_argument(
        "--jobs", type=positive_int, default=min(2, os.cpu_count() or 1), help="runs at a time"
    )
    p.add_argument("--name", help="directory under out_dir (default <preset>-compare-seed<seed>)")
    p.add_argument(
        "--top", type=non_negative_int, default=36, help="images in the label-issue montage"
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="then train the first method again without the labels the report flags "
        "(data.exclude), and add it to the table",
    )
    _add_recipe(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from mwnet.train.compare import compare, failure_line, method_configs
    from mwnet.train.recipes import recipe_overrides

    if not args.preset and not args.config and not args.overrides:
        raise ValueError("give --preset NAME (see `mwnet presets`), --config FILE or overrides")
    out, configs = method_configs(
        args.preset,
        recipe_overrides(args.recipe, args.overrides),
        list(args.methods),
        base=args.config,
        name=args.name,
    )
    record = compare(configs, out, args.jobs, montage=args.top, retrain=args.retrain)
    failed = failure_line(record)
    if failed:  # the others' results are written and shown; the command still failed
        print(failed, file=sys.stderr)
        return 2
    return 0


def add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the shipped presets, one line each")
    p.set_defaults(func=run_presets)


def run_presets(args: argparse.Namespace) -> int:
    from mwnet.config import preset_description, preset_names

    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run's checkpoint on its test set")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, help="default: RUN_DIR/checkpoint.pt")
    p.add_argument(
        "--teacher",
        action="store_true",
        help="score the run's EMA teacher instead of the model (label-correction runs and "
        "runs without a clean set keep one)",
    )
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from mwnet.config import load_config_file
    from mwnet.run import load_checkpoint
    from mwnet.train import loop
    from mwnet.train.experiment import build_experiment

    config = args.run_dir / loop.CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{args.run_dir} is not a run directory (no {loop.CONFIG} in it)")
    trainer = loop.Trainer(build_experiment(load_config_file(config)), args.run_dir, quiet=True)
    checkpoint = args.checkpoint or args.run_dir / loop.CHECKPOINT
    loop.restore(trainer, load_checkpoint(checkpoint), checkpoint, evaluating=True)
    model = None
    if args.teacher:
        if trainer.exp.teacher is None:
            raise ValueError(
                f"{args.run_dir} has no EMA teacher: only mwnet-sl/cmwnet-sl runs and runs with "
                "data.meta_source=auto (teacher scorer) keep one; drop --teacher"
            )
        model = trainer.exp.teacher.module
    scores = {"epoch": trainer.epoch, "scored": "teacher" if args.teacher else "model"}
    # every score is a percentage: two decimals, as in summary.json (metrics.jsonl and
    # Trainer.evaluate keep them unrounded)
    scores |= {k: _percent(v) for k, v in trainer.evaluate(model).items()}
    print(json.dumps(scores, indent=2))
    return 0


def _percent(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="redraw a run directory's plots")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from mwnet.run import plot_run

    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {args.run_dir}")
    written = plot_run(args.run_dir)
    for path in written:
        print(path)
    if not written:
        print(f"nothing to plot in {args.run_dir} (no metrics.jsonl yet)", file=sys.stderr)
    return 0
