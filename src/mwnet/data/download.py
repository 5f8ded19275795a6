"""Checksummed, atomic downloads with the standard library only.

A partial or corrupt file in the cache is worse than no file: every later run would
trust it. So a download goes to a temporary file in the destination directory, is
verified against its MD5, flushed to disk, and only then renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO

from mwnet.data.errors import DatasetError

_CHUNK = 1 << 20


def md5_of(path: str | os.PathLike[str]) -> str:
    """Return the hex MD5 of a file, read in chunks so large archives are fine."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_url(url: str, timeout: float = 60.0) -> BinaryIO:
    """Open ``url`` for reading. Tests replace this function to stay off the network."""
    request = urllib.request.Request(url, headers={"User-Agent": "mwnet"})
    return urllib.request.urlopen(request, timeout=timeout)


def download_file(url: str, dest: str | os.PathLike[str], md5: str) -> Path:
    """Download ``url`` to ``dest`` if the MD5 matches; never leave a partial file.

    Raises:
        DatasetError: on a network error, a checksum mismatch, or an unwritable
            destination; ``dest`` is then left as it was (absent, or the previous file).
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DatasetError(f"cannot write to {dest.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with open_url(url) as response:
                    shutil.copyfileobj(response, out, _CHUNK)
            except OSError as exc:  # URLError, HTTPError, timeouts are all OSErrors
                if exc.errno in _WRITE_ERRNOS:  # the download was fine, the disk was not
                    raise _unwritable(dest, exc) from exc
                raise DatasetError(f"could not download {url}: {exc}") from exc
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as exc:
                raise _unwritable(dest, exc) from exc
        got = md5_of(tmp)
        if got != md5:
            raise DatasetError(
                f"checksum mismatch for {url}: expected MD5 {md5}, got {got}; "
                f"the file was not saved to {dest}"
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES}
)
"""What writing the downloaded bytes (not fetching them) fails with: a full disk, a file
size limit (ulimit -f), a quota, a read-only or failing file system."""


def _unwritable(dest: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"cannot write {dest} ({exc.strerror or exc}); free space there, or set data.root "
        "to a directory with room for the dataset (downloads go there)"
    )


def _fsync_dir(path: Path) -> None:
    """Persist a rename; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
