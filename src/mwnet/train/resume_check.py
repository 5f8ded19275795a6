"""A resumed run is the run that was started: its config and its data, checked.

Resuming rebuilds the experiment from ``config.yaml`` and then loads the checkpoint over
it. An edit of ``config.yaml`` in between would be half-applied: the optimizer's saved
state overrides a new learning rate, while a new seed, noise rate or method changes the
data and the method under a model trained on the old ones, and the run silently becomes a
mix of two experiments. So every checkpoint carries the resolved config it was trained
with and a fingerprint of its data, and a resume compares both with what it is about to
run. A difference is refused with the changed keys named, except for the keys in
:data:`SAFE_CHANGES`, which the user may allow explicitly (``mwnet train --resume RUN
--allow-change KEY``) because they change how the run continues, not what it has done.
The fingerprints and :data:`SAFE_CHANGES` live in :mod:`mwnet.run.fingerprint` (the
run-directory layer, which the label-issue report reads too) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mwnet.config import ConfigError, upgrade_config
from mwnet.methods import method_descriptor
from mwnet.methods.flat_keys import FLAT_KEYS
from mwnet.run.fingerprint import (
    LEGACY_SAFE_CHANGES,
    NOT_COMPARED,
    SAFE_CHANGES,
    config_fingerprint,
    config_snapshot,
    data_fingerprint,
    flatten,
    legacy_config_fingerprint,
)

__all__ = [
    "LEGACY_SAFE_CHANGES",
    "NOT_COMPARED",
    "SAFE_CHANGES",
    "check_allowed",
    "check_resume_config",
    "config_changes",
    "config_fingerprint",
    "config_snapshot",
    "data_fingerprint",
    "legacy_config_fingerprint",
]


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """``{dotted key: (saved value, current value)}`` for every leaf that differs."""
    old, new = flatten(saved), flatten(current)
    missing = "<unset>"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(old.keys() | new.keys())
        if key not in NOT_COMPARED and old.get(key, missing) != new.get(key, missing)
    }


def check_allowed(allow: Iterable[str]) -> tuple[str, ...]:
    """Validate ``--allow-change`` keys before any work: only :data:`SAFE_CHANGES` can be."""
    keys = tuple(
        dict.fromkeys(_grouped(k.strip()) for part in allow for k in part.split(",") if k.strip())
    )
    bad = [k for k in keys if k not in SAFE_CHANGES]
    if bad:
        raise ConfigError(
            f"--allow-change {bad[0]}: only these keys may change on resume: "
            f"{', '.join(SAFE_CHANGES)}; for any other change start a new run (name=...)"
        )
    return keys


def _grouped(key: str) -> str:
    """``key`` in the grouped method layout (``method.low_memory``: the flat key of earlier
    versions, ``method.mwnet.low_memory``)."""
    flat = key.removeprefix("method.")
    if key.startswith("method.") and flat in FLAT_KEYS:
        return f"method.{FLAT_KEYS[flat][0]}"
    return key


def check_resume_config(
    saved: Mapping[str, Any] | None,
    cfg: Any,
    where: str,
    *,
    allow: Iterable[str] = (),
    epochs_done: int | None = 0,
) -> None:
    """Refuse to continue a run under a config other than the one it was trained with.

    Args:
        saved: the config stored in the checkpoint (None for checkpoints of older mwnet
            versions, which stored none: nothing to compare).
        cfg: the config the run is about to continue with (from ``config.yaml``).
        where: the file ``cfg`` came from, for the message.
        allow: keys of :data:`SAFE_CHANGES` the user allows to differ.
        epochs_done: epochs the checkpoint has finished; None when the run is only
            evaluated, not continued.

    Raises:
        ConfigError: naming every changed key with its old and new value, and the fix.
    """
    if saved is None:
        return
    saved = upgrade_config(dict(saved))  # a checkpoint of the flat method layout too
    changes = config_changes(saved, config_snapshot(cfg))
    if not changes:
        return
    allowed = set(check_allowed(allow))
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        safe = [k for k in refused if k in SAFE_CHANGES]
        hint = f"; to continue with the new {', '.join(safe)}, add --allow-change " + ",".join(safe)
        raise ConfigError(
            f"{where} differs from the config the run was trained with (kept in its "
            f"checkpoint): {_describe(refused)}. A resumed run keeps its config: undo the "
            f"edit, or start a new run (name=...){hint if len(safe) == len(refused) else ''}"
        )
    if "optim.epochs" in changes and epochs_done is not None:
        _check_new_epochs(saved, cfg, epochs_done)


def _check_new_epochs(saved: Mapping[str, Any], cfg: Any, epochs_done: int) -> None:
    old, new = int(saved["optim"]["epochs"]), int(cfg.optim.epochs)
    if cfg.optim.schedule == "cosine":
        raise ConfigError(
            f"optim.epochs cannot change from {old} to {new} on resume with "
            "optim.schedule=cosine: the epochs done followed a cosine fitted to "
            f"{old} epochs; start a new run instead"
        )
    if new < epochs_done:
        raise ConfigError(
            f"optim.epochs={new} is below the {epochs_done} epoch(s) this run has done; keep "
            f"optim.epochs >= {epochs_done}"
        )
    if method_descriptor(cfg.method.name).trains_on_meta and epochs_done > min(old, new):
        raise ConfigError(
            f"optim.epochs cannot change from {old} to {new}: this finetune run is "
            f"fine-tuning on the meta set since epoch {old + 1}; start a new run instead"
        )


def _describe(changes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items())
