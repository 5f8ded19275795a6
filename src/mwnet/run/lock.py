"""One writer per run directory: an advisory ``flock`` on ``RUN/.lock``.

Two processes training into one run directory interleave their epochs in
``metrics.jsonl`` and overwrite each other's checkpoints, and neither notices. So a
process takes this lock before it does any work on a run (starting, resuming) and holds it
while it writes. ``flock`` locks belong to the open file: the kernel drops them when the
process ends, however it ends (SIGKILL included), so a lock is never left stale. The file
itself stays; its text names the holder (pid, host, start time) for the error message of
whoever finds it taken. Where ``fcntl`` does not exist (Windows) the lock is not enforced.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunDirBusy(RuntimeError):
    """The run directory is locked by another process; the message names it."""


class RunLock:
    """The exclusive lock of one run directory, held from :meth:`acquire` to :meth:`release`.

    Not re-entrant across objects: a second ``RunLock`` on the same directory fails to
    acquire even in the same process, which is what keeps two trainers in one program
    from sharing a directory too.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> RunLock:
        """Take the lock without waiting.

        Raises:
            RunDirBusy: another process (or another lock object) holds it; the message
                names the holder as it recorded itself.
            OSError: the directory does not exist or cannot be written.
        """
        if self._file is not None:
            return self
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RunDirBusy(
                    f"{self.run_dir} is in use by {holder}; two processes writing one run "
                    "directory would mix their epochs. Wait for it to end or stop it, or "
                    "train into another directory (name=...)"
                ) from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"mwnet pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Let go of the lock (a no-op when not held). The lock file is left in place:
        removing it would let a third process lock a new file while a second still
        holds the old one."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()
        except OSError:
            pass
        f.close()  # closing the file releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
