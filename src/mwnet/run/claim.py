"""Claiming a run directory: created atomically, locked, cleaned, and given up cleanly.

A run directory belongs to one process from the moment a run is started or resumed: the
directory is created with one ``mkdir`` (two processes choosing the same fresh name cannot
both succeed), its lock is taken before any data is read, and temporary files that a
killed process left in it are removed. A run that fails before it saved anything gives
back the directory it created, so a typo or a diverging learning rate does not leave a
directory holding only its config behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from mwnet.run.atomic import remove_stale_temporaries
from mwnet.run.lock import LOCK_FILE, RunDirBusy, RunLock

__all__ = ["RunClaim", "RunDirBusy", "RunDirError", "claim_fresh", "claim_run_dir"]


class RunDirError(RuntimeError):
    """A run directory cannot be created or written; the message names it and the fix."""


class RunClaim:
    """A run directory this process has locked, and whether this process created it."""

    def __init__(self, run_dir: Path, lock: RunLock, created: bool) -> None:
        self.run_dir = run_dir
        self.lock = lock
        self.created = created

    def release(self) -> None:
        self.lock.release()

    def abandon(self, own_files: Iterable[str] = ()) -> None:
        """Release the lock; if this process created the directory and it holds nothing but
        ``own_files`` (and the lock file), remove it, so a run that failed before its first
        epoch leaves nothing behind."""
        self.lock.release()
        if not self.created or not self.run_dir.is_dir():
            return
        ours = {LOCK_FILE, *own_files}
        if any(entry.name not in ours for entry in self.run_dir.iterdir()):
            return
        with contextlib.suppress(OSError):
            for name in ours:
                (self.run_dir / name).unlink(missing_ok=True)
            self.run_dir.rmdir()


def claim_run_dir(run_dir: str | os.PathLike[str], *, create: bool = False) -> RunClaim:
    """Lock ``run_dir`` (creating it and its parents if ``create``) and remove stale
    temporary files from it.

    Raises:
        RunDirBusy: another process holds the directory.
        RunDirError: it cannot be created, is not a directory, or cannot be written.
    """
    run_dir = Path(run_dir)
    created = False
    if create:
        created = not run_dir.exists()
        _mkdir(run_dir, exist_ok=True)
    elif not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give the path of a run directory")
    return _locked(run_dir, created)


def claim_fresh(parent: str | os.PathLike[str], stem: str) -> RunClaim:
    """Create and lock ``parent/stem``, or ``parent/stem-2``, ``-3``... whichever is the
    first that did not exist: one ``mkdir`` decides, so concurrent callers never share."""
    parent = Path(parent)
    _mkdir(parent, exist_ok=True)
    n = 1
    while True:
        run_dir = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            _mkdir(run_dir, exist_ok=False)
        except FileExistsError:
            n += 1
            continue
        return _locked(run_dir, created=True)


def _locked(run_dir: Path, created: bool) -> RunClaim:
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunDirBusy:
        raise
    except OSError as err:
        raise _unwritable(run_dir, err) from None
    try:
        remove_stale_temporaries(run_dir)
    except OSError as err:
        lock.release()
        raise _unwritable(run_dir, err) from None
    return RunClaim(run_dir, lock, created)


def _mkdir(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError as err:
        if not exist_ok:  # taken: the caller may try another name
            raise
        raise _unwritable(path, err) from None
    except OSError as err:
        raise _unwritable(path, err) from None


def _unwritable(path: Path, err: OSError) -> RunDirError:
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file" if blocker is not None else (err.strerror or str(err))
    return RunDirError(
        f"cannot use {path} as a run directory ({reason}); choose a writable out_dir=... "
        "(or another name=...)"
    )
