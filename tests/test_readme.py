"""The README's Python sections are the examples (which run as tests), not copies that can
drift from them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


SECTIONS = {
    "## Quick start in Python": "quickstart.py",
    "## PyTorch Lightning": "lightning_quickstart.py",
    "## scikit-learn": "sklearn_quickstart.py",
}


@pytest.mark.parametrize("heading", SECTIONS)
def test_the_sections_first_python_block_is_its_example(heading: str) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"{heading}\n", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / SECTIONS[heading]).read_text()
    body = ast.parse(example).body[1:]  # without the docstring
    assert ast.dump(ast.parse(block)) == ast.dump(ast.Module(body=body, type_ignores=[]))
