"""A run directory's ``config.yaml``, read back as the validated config it was saved from.

The training loop writes the resolved config into the run directory; whoever reads the
run later (a resume, an evaluation, a label-issue report) reads it back here, through
the same schema (:func:`mwnet.config.load_config_file`), so that a config saved by an
earlier version in the flat method layout loads too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mwnet.config import load_config_file

CONFIG_FILE = "config.yaml"
"""The resolved config's name in a run directory."""


def run_config(run_dir: Path) -> Any:
    """The saved config of the run directory ``run_dir``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE} in it)")
    return load_config_file(run_dir / CONFIG_FILE)
