"""A strict reader for the IDX format used by MNIST and Fashion-MNIST.

The format is tiny (a 4-byte magic, big-endian dimension sizes, raw bytes), so we parse
it ourselves instead of depending on a vision library, and we check everything the
header promises: a truncated download otherwise shows up much later as a reshape error
or, worse, as silently missing samples.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mwnet.data.errors import DatasetError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the file's content, transparently gunzipped when it is gzip data.

    Gzip is detected from the content, not the name, so a renamed file still loads.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file: {exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip data: {exc}") from exc


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file and return its array with the header's shape.

    Args:
        path: the file, raw or gzipped.
        expected_magic: ``IDX_IMAGES_MAGIC`` (3-d) or ``IDX_LABELS_MAGIC`` (1-d).

    Raises:
        DatasetError: naming ``path`` when the magic number is wrong, the header is
            short, or the payload is shorter or longer than the dimensions say.
    """
    data = read_file_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got < expected:
        raise DatasetError(
            f"{path}: truncated IDX payload: header says shape {dims} ({expected} bytes), "
            f"file has {got} bytes"
        )
    if got > expected:
        raise DatasetError(
            f"{path}: {got - expected} unexpected trailing bytes after the IDX payload "
            f"of shape {dims}"
        )
    return np.frombuffer(bytearray(data[header:]), dtype=np.uint8).reshape(dims)
