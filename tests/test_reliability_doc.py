"""docs/RELIABILITY.md lists exactly the faults the tests try, as tests/reliability.py
registers them. Rewrite its table with ``python tests/test_reliability_doc.py``."""

from __future__ import annotations

import importlib
import sys

import reliability

DOC = reliability.REPO / "docs" / "RELIABILITY.md"
START, END = "<!-- cases -->", "<!-- /cases -->"


def _register_every_case() -> list[reliability.Case]:
    """Import every test module (those pytest has imported already are reused), so the
    registry holds every case whichever tests this session runs."""
    for path in sorted((reliability.REPO / "tests").rglob("test_*.py")):
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        importlib.import_module(path.stem)
    return reliability.registered()


def _split(text: str) -> tuple[str, str, str]:
    head, found, rest = text.partition(START + "\n")
    table, found_end, tail = rest.partition(END)
    assert found and found_end, f"{DOC} must hold the markers {START} and {END}"
    return head, table, tail


def test_reliability_doc_lists_every_tested_case():
    cases = _register_every_case()
    assert len(cases) > 50
    _, table, _ = _split(DOC.read_text(encoding="utf-8"))
    assert table == reliability.render(cases), (
        f"{DOC.name} is out of date with the tests: run `python tests/test_reliability_doc.py`"
    )


def test_every_kind_has_cases():
    kinds = {case.kind for case in _register_every_case()}
    assert kinds == set(reliability.KINDS)


if __name__ == "__main__":
    head, _, tail = _split(DOC.read_text(encoding="utf-8"))
    DOC.write_text(head + START + "\n" + reliability.render(_register_every_case()) + END + tail)
    print(f"wrote {DOC}")
