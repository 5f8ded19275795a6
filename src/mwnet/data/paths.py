"""Where datasets are looked for and cached.

One search order for every named dataset, so that a user who has the files somewhere
(an explicit ``root``, a shared ``$MWNET_DATA`` tree, a distribution package) never
triggers a download, and a download always lands in the same per-user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

MWNET_DATA_ENV = "MWNET_DATA"


def cache_dir() -> Path:
    """Return the per-user cache root, ``$XDG_CACHE_HOME/mwnet`` or ``~/.cache/mwnet``.

    Resolved on every call (not at import) so that tests and users can change the
    environment at run time.
    """
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "mwnet"


def search_dirs(
    name: str, root: str | os.PathLike[str] | None, system_dirs: tuple[str, ...] = ()
) -> list[Path]:
    """Return the directories to search for dataset ``name``, in priority order.

    An explicit ``root`` is the only place looked in: ``root`` and ``root/<name>``. A root
    that lacks the files must not quietly give way to another copy found elsewhere (the
    run would record one path and train on another). Without a root the order is
    ``$MWNET_DATA/<name>``, any distribution-provided ``system_dirs``, then the cache
    ``cache_dir()/<name>``. Duplicates are dropped, existence is not checked (the caller
    reports every place it looked, including those that do not exist).
    """
    if root is not None:
        return [Path(root).expanduser(), Path(root).expanduser() / name]
    dirs: list[Path] = []
    env = os.environ.get(MWNET_DATA_ENV)
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs += [Path(d) for d in system_dirs]
    dirs.append(cache_dir() / name)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def download_dir(name: str, root: str | os.PathLike[str] | None) -> Path:
    """Where a download of dataset ``name`` goes: ``root/<name>`` for an explicit root
    (so the files are where the run says they are), else the cache."""
    if root is not None:
        return Path(root).expanduser() / name
    return cache_dir() / name
