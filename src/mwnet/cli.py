"""The ``mwnet`` command line.

Each subcommand is one function that adds its parser to the subcommand group and sets
``func`` (called with the parsed arguments, returns the exit code), registered with
:func:`command`. Each command's arguments live in its own module (``train/commands.py``,
``label_issues/command.py``, ``suite/command.py``, ``predict/command.py``,
``bench/command.py``) and the work itself in the library; here only the subcommands are
wired.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from mwnet.argtypes import print_help_of

CommandAdder = Callable[..., None]

_COMMANDS: list[CommandAdder] = []


def command(add: CommandAdder) -> CommandAdder:
    """Register ``add(subparsers)``, which adds one subcommand to ``mwnet``."""
    _COMMANDS.append(add)
    return add


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``mwnet: error: ...`` line, like every other."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mwnet: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from mwnet import __version__

    parser = _Parser(
        prog="mwnet",
        description="Meta-Weight-Net: learned sample weighting for noisy labels and class "
        "imbalance.",
    )
    parser.add_argument("--version", action="version", version=f"mwnet {__version__}")
    parser.set_defaults(func=print_help_of(parser))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides wherever they stand (argparse alone
    would reject ``--quiet optim.epochs=2``: overrides after a flag)."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    stray = [a for a in extra if overrides is None or a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*overrides, *extra]
    return args


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the input (config, data, files, the machine), shown as one line."""
    from mwnet.core.checks import NonFiniteError
    from mwnet.run import CheckpointError, RunDirBusy, RunDirError

    return (ValueError, OSError, ImportError, CheckpointError, RunDirError, RunDirBusy,
            NonFiniteError)  # fmt: skip


_EXTRAS = {"omegaconf": "train", "tqdm": "train", "matplotlib": "train", "PIL": "images"}
"""Top-level modules of the optional dependencies, and the extra of pyproject.toml that
installs each."""


def _missing_module(err: ModuleNotFoundError, command: str) -> str:
    """What to install when an optional dependency is missing."""
    name = (err.name or "").split(".")[0]
    if name in _EXTRAS:
        return (
            f"`mwnet {command}` needs {name}, which is not installed: pip install "
            f"'mwnet[{_EXTRAS[name]}]'"
        )
    if name == "torchvision":
        return "this model needs torchvision, which is not installed: pip install torchvision"
    return f"{err}; install it (pip install {name})"


def _error_line(err: BaseException) -> str:
    """``mwnet: error: <message>``; a message with details on further lines (where data
    was looked for, how to get it) keeps them, indented under the one error line."""
    first, *details = str(err).strip().splitlines() or [type(err).__name__]
    indented = [line if line.startswith("  ") else f"  {line}" for line in details]
    return "\n".join([f"mwnet: error: {first}", *indented])


def _silence_closed_pipes() -> None:
    """Point stdout and stderr at /dev/null: their reader has gone, and Python's flush of
    what is still buffered at exit would otherwise fail again, with a message and exit 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no file descriptor (captured output)
            continue


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mwnet`` console script and ``python -m mwnet``.

    Input errors print one ``mwnet: error: ...`` line and exit 2 (MWNET_DEBUG=1 shows the
    traceback); Ctrl-C and SIGTERM exit 130 and 143; anything else is a bug in mwnet and
    prints its traceback and a line asking to report it (exit 1).
    """
    from mwnet.machine import keep_freed_memory
    from mwnet.run import sigterm_as_interrupt

    keep_freed_memory()
    parser = build_parser()
    args = parse_args(parser, argv)
    command = " ".join(a for a in (argv if argv is not None else sys.argv[1:])[:1])
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated)
        if os.environ.get("MWNET_DEBUG"):
            raise
        code = int(getattr(stop, "exit_code", 130))
        print(f"\nmwnet: stopped ({'SIGTERM' if code != 130 else 'Ctrl-C'})", file=sys.stderr)
        return code
    except BrokenPipeError as err:  # `mwnet presets | head`: the reader left, nothing is wrong
        _silence_closed_pipes()
        return int(getattr(err, "exit_code", 0))
    except ModuleNotFoundError as err:
        if os.environ.get("MWNET_DEBUG"):
            raise
        print(f"mwnet: error: {_missing_module(err, command)}", file=sys.stderr)
        return 2
    except _user_errors() as err:
        if os.environ.get("MWNET_DEBUG"):
            raise
        print(_error_line(err), file=sys.stderr)
        return 2
    except Exception:
        from mwnet import __version__

        traceback.print_exc()
        print(
            f"mwnet: internal error: this is a bug in mwnet {__version__}, not in your input; "
            "please report it with the command line and the traceback above",
            file=sys.stderr,
        )
        return 1


@command
def _add_training(sub) -> None:
    from mwnet.train import commands

    for add in (
        commands.add_train,
        commands.add_compare,
        commands.add_presets,
        commands.add_eval,
        commands.add_plot,
    ):
        add(sub)


@command
def _add_fit(sub) -> None:
    from mwnet.fitting.command import add_fit

    add_fit(sub)


@command
def _add_issues(sub) -> None:
    from mwnet.label_issues.command import add_issues

    add_issues(sub)


@command
def _add_suite(sub) -> None:
    from mwnet.suite.command import add_suite

    add_suite(sub)


@command
def _add_predict(sub) -> None:
    from mwnet.predict.command import add_predict

    add_predict(sub)


@command
def _add_bench(sub) -> None:
    from mwnet.bench.command import add_bench

    add_bench(sub)
