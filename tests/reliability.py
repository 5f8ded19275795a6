"""The registry of faults and bad inputs the tests try, and what the user sees for each.

A test that checks how mwnet meets a fault says so with :func:`covers` (one case) or
:func:`covers_each` (a table of cases, one parametrised test each). ``docs/RELIABILITY.md``
holds the table :func:`render` makes of the registry, and ``tests/test_reliability_doc.py``
fails when the two differ, so the document lists exactly what is tested, under the names
of the tests that test it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

KINDS: dict[str, str] = {
    "wrong data": "Data other than the data asked for",
    "state damage": "A failed step or save that changes state",
    "mixed runs": "Two processes or two configs in one run directory",
    "stale results": "Results that describe an older state of the run",
    "bad input": "Bad config values, paths, devices and models",
    "damaged files": "Truncated, foreign, tampered or unreadable files",
    "interrupts": "Ctrl-C, SIGTERM and kills",
    "head mode": "hypergrad=head on a model whose output is not the head's",
    "installation": "Missing optional dependencies",
}
"""Kinds of fault, in the order the document lists them, with their section titles."""


@dataclass(frozen=True)
class Case:
    kind: str
    fault: str
    """The fault or bad input, as the user would describe it."""
    sees: str
    """What the user sees (for error lines: the text the test asserts is in it)."""
    test: str = ""
    """``path::test_name`` of the test that checks it."""


@dataclass(frozen=True)
class Row:
    """One case of a table-driven test, with the arguments the test needs for it."""

    kind: str
    fault: str
    sees: str
    args: tuple[Any, ...] = ()


_REGISTRY: dict[tuple[str, str, str], Case] = {}


def covers(kind: str, fault: str, sees: str) -> Callable[[Callable], Callable]:
    """Decorator: the test checks that ``fault`` ends in what ``sees`` says."""

    def register(test: Callable) -> Callable:
        _add(Case(kind, fault, sees, _test_id(test)))
        return test

    return register


def covers_each(rows: Sequence[Row], argname: str = "row") -> Callable[[Callable], Callable]:
    """Decorator: parametrise the test over ``rows`` (passed as ``argname``) and register
    each row as a case it covers."""

    def register(test: Callable) -> Callable:
        for row in rows:
            _add(Case(row.kind, row.fault, row.sees, _test_id(test)))
        ids = [row.fault for row in rows]
        return pytest.mark.parametrize(argname, rows, ids=ids)(test)

    return register


def _add(case: Case) -> None:
    if case.kind not in KINDS:
        raise ValueError(f"unknown kind {case.kind!r}; one of {', '.join(KINDS)}")
    key = (case.kind, case.fault, case.test)
    if key in _REGISTRY and _REGISTRY[key] != case:
        raise ValueError(f"case registered twice with different text: {case}")
    _REGISTRY[key] = case


def _test_id(test: Callable) -> str:
    path = Path(inspect.getsourcefile(test) or "").resolve()
    return f"{path.relative_to(REPO).as_posix()}::{test.__name__}"


def registered() -> list[Case]:
    """Every registered case, sorted by kind (in :data:`KINDS` order), test and fault."""
    order = list(KINDS)
    return sorted(_REGISTRY.values(), key=lambda c: (order.index(c.kind), c.test, c.fault))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(cases: Sequence[Case]) -> str:
    """The document's table section: one table per kind."""
    lines = [f"{len(cases)} cases, each checked by the test named beside it.", ""]
    for kind, title in KINDS.items():
        mine = [c for c in cases if c.kind == kind]
        if not mine:
            continue
        lines += [f"### {title}", "", "| fault or bad input | what the user sees | test |"]
        lines.append("|---|---|---|")
        for c in mine:
            lines.append(f"| {_cell(c.fault)} | {_cell(c.sees)} | `{c.test}` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
