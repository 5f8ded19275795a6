"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

Every file in a run directory is rewritten this way (write a temporary file next to the
target, flush and fsync it, ``os.replace`` it over the target, fsync the directory),
because a run is often killed mid-write: by Ctrl-C, a scheduler's time limit, or a full
disk. The temporary file lives in the target's directory so that the rename never
crosses a file system, which is what makes it atomic.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
"""What :func:`atomic_write` names its temporary files: ``.<target>.<pid>.<hex>.tmp``."""


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable across a power loss.

    Without it the new name may still point at the old file after a crash. Windows
    cannot open a directory for syncing; there the rename is as durable as the OS makes it.
    """
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a file to write; on a clean exit it replaces ``path`` in one step.

    ``mode`` is ``"w"`` (text, UTF-8, ``\\n`` line ends) or ``"wb"``. If the block raises
    (including ``KeyboardInterrupt``), the temporary file is removed and ``path`` is
    left exactly as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    # Not tempfile.mkstemp: it creates files readable by the owner only, and run
    # directories are often shared. os.open applies the umask like a plain open() would.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    with naming(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with naming(path):
            if mode == "wb":
                f: IO[Any] = os.fdopen(fd, "wb")
            else:
                f = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with naming(path.parent):
        fsync_dir(path.parent)


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a failed ``write``, ``flush`` or
    ``fsync``: ``[Errno 28] No space left on device``) as the same error naming ``path``,
    the file the user knows (never the temporary file), so the message says what failed."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and Path(err.filename).name.endswith(_TMP_SUFFIX):
            err.filename = None  # the temporary's name means nothing to the user
        if err.filename is not None:
            raise
        if err.errno is None:
            raise OSError(f"{path}: {err}") from err
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), os.fspath(path)) from err


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left behind.

    A process killed mid-write (SIGKILL, power loss) never reaches the cleanup, so its
    ``.<target>.<pid>.<hex>.tmp`` stays forever, and a checkpoint-sized one each time.
    Call this only while no other process can be writing into ``directory`` (a run
    directory whose lock you hold): every such file is then stale. Returns what was removed.
    """
    removed = []
    for entry in Path(directory).iterdir():
        if _TMP_NAME.match(entry.name) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
