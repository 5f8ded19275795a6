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
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from mwnet.methods import method_descriptor
from mwnet.methods.flat_keys import FLAT_KEYS
from mwnet.train.config import ConfigError, upgrade_config

SAFE_CHANGES: dict[str, str] = {
    "optim.epochs": "train longer (or shorter, down to the epochs already done); not with "
    "optim.schedule=cosine, whose curve is fitted to the old length",
    "eval_train": "what is measured after each epoch",
    "data.eval_batch_size": "evaluation batch size (same scores)",
    "data.root": "where the dataset files are (the data itself is checked)",
    "data.download": "whether missing dataset files may be downloaded",
    "device": "where training continues (floating-point rounding may differ)",
    "threads": "CPU threads",
    "method.compile": "torch.compile of the same step (rounding may differ)",
    "method.mwnet.low_memory": "recompute instead of keep a graph (same step)",
    "distributed.backend": "the collective backend under torchrun",
    "distributed.timeout": "how long ranks wait for each other",
}
"""Keys a resumed run may change with ``--allow-change KEY``, and what each one changes."""

NOT_COMPARED: tuple[str, ...] = ("description", "name", "out_dir")
"""Where the run directory was created and what it is called: no effect on training."""


def config_snapshot(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain containers, as stored in a checkpoint."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """``{dotted key: (saved value, current value)}`` for every leaf that differs."""
    old, new = _flatten(saved), _flatten(current)
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


def config_fingerprint(cfg: Any) -> int:
    """A CRC-32 of what the resolved config says a run trains: every key but
    :data:`NOT_COMPARED` and :data:`SAFE_CHANGES` (which a resumed run may change), so a
    record made by the run keeps matching its ``config.yaml`` and no other run's."""
    kept = {
        key: value
        for key, value in _flatten(config_snapshot(cfg)).items()
        if key not in NOT_COMPARED and key not in SAFE_CHANGES
    }
    return zlib.crc32(json.dumps(kept, sort_keys=True, default=str).encode())


LEGACY_SAFE_CHANGES: tuple[str, ...] = ("method.low_memory",)
"""Keys of :data:`SAFE_CHANGES` in the flat method layout of earlier versions."""


def legacy_config_fingerprint(saved: Mapping[str, Any]) -> int | None:
    """:func:`config_fingerprint` as earlier versions computed it, of a ``config.yaml``
    saved in the flat method layout (``saved``: its plain contents), so the records of
    such a run keep matching it; None for a config of the grouped layout."""
    method = saved.get("method")
    if not isinstance(method, Mapping) or not any(k in FLAT_KEYS for k in method):
        return None
    skipped = (*NOT_COMPARED, *SAFE_CHANGES, *LEGACY_SAFE_CHANGES)
    kept = {key: value for key, value in _flatten(saved).items() if key not in skipped}
    return zlib.crc32(json.dumps(kept, sort_keys=True, default=str).encode())


def data_fingerprint(*tensors: torch.Tensor) -> int:
    """A CRC-32 of the tensors' shapes, dtypes and bytes: equal iff the data is (up to
    collisions) the same, so a resume notices dataset files that changed under a run."""
    crc = 0
    for t in tensors:
        t = t.detach().cpu().contiguous()
        crc = zlib.crc32(f"{tuple(t.shape)}{t.dtype}".encode(), crc)
        crc = zlib.crc32(t.view(torch.uint8).numpy().data if t.numel() else b"", crc)
    return crc


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _describe(changes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items())
