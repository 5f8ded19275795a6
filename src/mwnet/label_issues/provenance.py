"""Whether the records a report reads are this run's, and of its latest saved state.

A run directory can be assembled by hand: a ``signals.npz`` or ``train_paths.txt`` copied
from another run, or put back from an older copy of this one. A report on it would flag
another run's samples, or an older model's view of them, and look just as plausible. So
the training loop writes into ``signals.npz`` which run it belongs to (the fingerprints
of the run's config and data, its seed) and at which epoch, and the report checks them
against the run directory's ``config.yaml`` and checkpoint before it scores anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mwnet.run.checkpoint import CHECKPOINT_NAME
from mwnet.run.records import PATHS_FILE, paths_fingerprint, read_paths

RUN_KEYS = ("run_epoch", "run_seed", "run_config_crc", "run_data_crc")
"""The extra columns of ``signals.npz`` that name its run and epoch."""


def check_signals_of_run(run_dir: Path, path: Path, extra: dict[str, np.ndarray]) -> list[str]:
    """Refuse a signals file that is not ``run_dir``'s, or not of its saved epoch.

    Returns:
        Warnings: a record of an older mwnet, which names no run, cannot be checked.

    Raises:
        ValueError: one line naming what differs and the fix.
    """
    if any(key not in extra for key in RUN_KEYS):
        return [
            f"{path} names no run (written by an older mwnet), so whether it is this run's "
            "cannot be checked"
        ]
    from mwnet.run.fingerprint import config_fingerprint
    from mwnet.run.saved_config import run_config

    cfg = run_config(run_dir)
    seed, config_crc = int(extra["run_seed"]), int(extra["run_config_crc"])
    if config_crc not in (config_fingerprint(cfg), _flat_fingerprint(run_dir)):
        what = (
            f"seed {seed} there, {int(cfg.seed)} in config.yaml"
            if seed != int(cfg.seed)
            else "its config is not this run's config.yaml"
        )
        raise ValueError(
            f"{path} was recorded by another run ({what}); a report from it would describe "
            f"that run's samples: put back the {path.name} this run wrote, or train this run "
            "again"
        )
    from mwnet.run import CheckpointError

    try:
        state = _checkpoint(run_dir)
    except CheckpointError as err:
        return [f"{path} cannot be checked against the run's checkpoint ({err})"]
    if state is None:
        return []
    data_crc, epoch = state.get("data_crc"), state.get("epoch")
    if data_crc is not None and int(data_crc) != int(extra["run_data_crc"]):
        raise ValueError(
            f"{path} was recorded on other data than this run's checkpoint was trained on "
            f"(data fingerprint {int(extra['run_data_crc']):08x} there, {int(data_crc):08x} "
            f"in {CHECKPOINT_NAME}): put back the {path.name} this run wrote, or train this "
            "run again"
        )
    recorded = int(extra["run_epoch"])
    if epoch is not None and int(epoch) != recorded:
        raise ValueError(
            f"{path} is of epoch {recorded} of the run, but its {CHECKPOINT_NAME} is of "
            f"epoch {int(epoch)}: the file is left from another state of the run (the run "
            f"stopped while saving, or the file was copied back); resume the run (mwnet "
            f"train --resume {run_dir}) to write it again"
        )
    return []


def _flat_fingerprint(run_dir: Path) -> int | None:
    """The config fingerprint of a run whose config.yaml has the flat method layout of
    earlier versions, as those versions recorded it."""
    import yaml

    from mwnet.run.fingerprint import legacy_config_fingerprint
    from mwnet.run.saved_config import CONFIG_FILE

    try:
        saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return legacy_config_fingerprint(saved) if isinstance(saved, dict) else None


def _checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint state, or None where the run directory keeps none."""
    from mwnet.run import load_checkpoint

    checkpoint = run_dir / CHECKPOINT_NAME
    return load_checkpoint(checkpoint) if checkpoint.is_file() else None


def run_paths(run_dir: Path, extra: dict[str, np.ndarray], samples: int) -> list[str] | None:
    """The run's image paths (file datasets), or None where it kept none.

    Raises:
        ValueError: ``train_paths.txt`` lists other images than the ones the signals are
            about (another run's file), whose montage would show the wrong pictures.
    """
    paths = read_paths(run_dir / PATHS_FILE)
    if paths is None:
        return None
    if "paths_crc" not in extra:  # an older record: a file of the wrong length is left out
        return paths if len(paths) == samples else None
    if len(paths) != samples or paths_fingerprint(paths) != int(extra["paths_crc"]):
        raise ValueError(
            f"{run_dir / PATHS_FILE} lists other images than the {samples} training samples "
            f"its signals.npz is about ({len(paths)} paths, other files or in another order): "
            f"it is another run's or was edited; put back the {PATHS_FILE} this run wrote"
        )
    return paths
