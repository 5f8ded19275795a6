"""Fingerprints of a run: of what its config says it trains, and of its data.

A run's records (the checkpoint, ``signals.npz``) carry these CRC-32s, so that whoever
reads them later (a resume, a label-issue report) can tell whether they are this run's:
the same config up to the keys that do not change what was trained, and the same data.
The keys a resumed run may change (:data:`SAFE_CHANGES`) are left out of the config's
fingerprint, so a record stays this run's after such a change.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from mwnet.methods.flat_keys import FLAT_KEYS

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


def config_fingerprint(cfg: Any) -> int:
    """A CRC-32 of what the resolved config says a run trains: every key but
    :data:`NOT_COMPARED` and :data:`SAFE_CHANGES` (which a resumed run may change), so a
    record made by the run keeps matching its ``config.yaml`` and no other run's."""
    kept = {
        key: value
        for key, value in flatten(config_snapshot(cfg)).items()
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
    kept = {key: value for key, value in flatten(saved).items() if key not in skipped}
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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: leaf value}`` of a nested mapping (an empty mapping is a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
