"""Argument types shared by the command-line parsers: argparse calls them on the text and
turns their ArgumentTypeError into a usage error naming the option. Also the default
action of a command group called without a subcommand (``mwnet``, ``mwnet bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def comma_list(choices: Sequence[str], what: str = "name") -> Callable[[str], tuple[str, ...]]:
    """A parser of ``a,b,c`` into a tuple of distinct names, each one of ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {bad[0] if bad else '(none given)'!r}; choose from "
                f"{', '.join(choices)}"
            )
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"a {what} is named twice in {text!r}")
        return names

    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def print_help_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """For a command group called without a subcommand: show its help, exit 2."""

    def show(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show
