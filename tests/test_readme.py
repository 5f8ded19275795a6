"""The README's Quick start is examples/quickstart.py (which runs as a test), not a copy
that can drift from it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_start_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start in Python", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / "quickstart.py").read_text()
    body = ast.parse(example).body[1:]  # without the docstring
    assert ast.dump(ast.parse(block)) == ast.dump(ast.Module(body=body, type_ignores=[]))


def test_lightning_section_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## PyTorch Lightning", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / "lightning_quickstart.py").read_text()
    body = ast.parse(example).body[1:]  # without the docstring
    assert ast.dump(ast.parse(block)) == ast.dump(ast.Module(body=body, type_ignores=[]))


def test_scikit_learn_section_is_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## scikit-learn", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / "sklearn_quickstart.py").read_text()
    body = ast.parse(example).body[1:]  # without the docstring
    assert ast.dump(ast.parse(block)) == ast.dump(ast.Module(body=body, type_ignores=[]))
