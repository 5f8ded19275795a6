"""The run directory's data files: metrics as JSON lines, JSON documents, per-sample CSVs.

The training loop owns the directory and decides what goes in it; this module only makes
each file safe to write while a run may be killed at any moment. JSON lines are appended
one complete line per call and fsynced, so a kill can cost at most the line being
written, which readers ignore; every other file is replaced atomically. The CSVs are
plain text with a fixed header so that a spreadsheet or pandas reads them as they are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mwnet.run.atomic import atomic_write, fsync_dir, naming

PATHS_FILE = "train_paths.txt"
"""One image path per training sample (file datasets only), written when a run starts."""
WEIGHT_FUNCTION_COLUMNS = ("loss", "weight")
_TAIL_CHUNK = 1 << 16


# --- JSON lines ---------------------------------------------------------------------


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync it, so a kill loses at most this line.

    numpy and torch scalars or arrays are stored as plain numbers or lists. If an earlier
    process died mid-line, that partial line is dropped first; otherwise the new record
    would be glued onto it and both would be lost.
    """
    path = Path(path)
    line = (_dumps(record) + "\n").encode("utf-8")
    created = not path.exists()
    with naming(path), path.open("a+b") as f:
        _drop_partial_last_line(f)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if created:
        with naming(path.parent):
            fsync_dir(path.parent)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the records of a JSON-lines file, ignoring a trailing partial line.

    A line counts only once its newline is written; anything after the last newline is
    the remains of a write that was interrupted.

    Raises:
        ValueError: a complete line is not a JSON object (names the file and line).
    """
    path = Path(path)
    *complete, _partial = path.read_bytes().split(b"\n")
    records = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}:{number}: not a valid JSON line ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {raw[:40]!r}")
        records.append(record)
    return records


def truncate_jsonl(path: str | os.PathLike[str], keep: Callable[[dict[str, Any]], bool]) -> int:
    """Atomically rewrite ``path`` with only the records for which ``keep`` is true.

    On resume this drops what was logged after the checkpoint being resumed from, so the
    replayed epochs are not recorded twice. A missing file is left missing.

    Returns:
        The number of records dropped (a trailing partial line is dropped uncounted).
    """
    path = Path(path)
    if not path.exists():
        return 0
    records = read_jsonl(path)
    kept = [record for record in records if keep(record)]
    if len(kept) == len(records) and _ends_with_a_line(path):
        return 0  # nothing to drop: the file stays as it is, untouched
    with atomic_write(path) as f:
        for record in kept:
            f.write(_dumps(record) + "\n")
    return len(records) - len(kept)


def _ends_with_a_line(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a complete line (no partial line to drop)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return True
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _drop_partial_last_line(f: io.BufferedRandom) -> None:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            f.truncate(start + newline + 1)
            return
        end = start
    f.truncate(0)


# --- JSON documents -----------------------------------------------------------------


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (config, summary): never half a file."""
    with atomic_write(path) as f:
        f.write(_dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON document written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, indent=indent, default=_to_builtin)


def _to_builtin(obj: Any) -> Any:
    """Turn numpy/torch scalars and arrays (and paths) into what JSON can hold."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON")


# --- per-sample paths ----------------------------------------------------------------


def write_paths(path: str | os.PathLike[str], paths: list[str] | tuple[str, ...]) -> None:
    """Atomically write the training samples' image paths, one per line, in training order."""
    with atomic_write(path) as f:
        f.writelines(f"{p}\n" for p in paths)


def paths_fingerprint(paths: list[str] | tuple[str, ...]) -> int:
    """A CRC-32 of the training samples' image paths, in order, as :func:`write_paths`
    writes them: what a record of the run keeps to tell its paths file from another's."""
    return zlib.crc32("".join(f"{p}\n" for p in paths).encode("utf-8"))


def read_paths(path: str | os.PathLike[str]) -> list[str] | None:
    """:func:`write_paths` output, or None when the run has no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()


# --- CSV tables ---------------------------------------------------------------------


def write_sample_weights(
    path: str | os.PathLike[str],
    index: Any,
    given_label: Any,
    loss: Any,
    weight: Any,
    *,
    true_label: Any = None,
    corrupted: Any = None,
    paths: Any = None,
) -> None:
    """Atomically write one CSV row per training sample: what MW-Net made of it.

    Columns ``index,[path,]given_label,[true_label,corrupted,]loss,weight``: the sample's
    index in the dataset's training split, its image file (file datasets), the label
    trained on, the true label and 1 if the two differ (only where the truth is known,
    i.e. synthetic noise), the sample's final loss and its weight. Arrays or tensors, all
    1-d and of one length; floats keep 6 significant digits.
    """
    if (true_label is None) != (corrupted is None):
        raise ValueError("give true_label and corrupted together, or neither")
    names = ["index", "given_label", "loss", "weight"]
    values = [index, given_label, loss, weight]
    if true_label is not None:
        names[2:2], values[2:2] = ["true_label", "corrupted"], [true_label, corrupted]
    columns = _columns(tuple(names), tuple(values))
    if true_label is not None and not np.isin(columns["corrupted"], (0, 1)).all():
        raise ValueError("corrupted must hold only 0/1 or booleans")
    header = list(names)
    if paths is not None:
        paths = [str(p) for p in paths]
        if len(paths) != len(columns["index"]):
            raise ValueError(f"columns must have one length, got {len(paths)} paths")
        header.insert(1, "path")
    ints = [columns[n].astype(np.int64).tolist() for n in names if n not in ("loss", "weight")]
    floats = [columns[n].astype(np.float64).tolist() for n in ("loss", "weight")]
    with atomic_write(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for k, row in enumerate(zip(*ints, *floats, strict=True)):
            *whole, lo, w = row
            cells: list[Any] = [*whole, f"{lo:.6g}", f"{w:.6g}"]
            if paths is not None:
                cells.insert(1, paths[k])
            writer.writerow(cells)


def read_sample_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read :func:`write_sample_weights` output: int64 ``index``/``given_label``
    (/``true_label``), bool ``corrupted``, float ``loss``/``weight``, and ``path`` (a list)
    where present. Files of the earlier layout (``index,label,true_label,corrupted,...``)
    read the same, ``label`` as ``given_label``."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if header is None:
        raise ValueError(f"{path}: empty file, expected a header")
    header = ["given_label" if h == "label" else h for h in header]
    required = {"index", "given_label", "loss", "weight"}
    if not required <= set(header) or len(set(header)) != len(header):
        raise ValueError(f"{path}: expected the columns {sorted(required)}, got {header!r}")
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"{path}: rows have another number of fields than the header")
    out: dict[str, Any] = {}
    for k, name in enumerate(header):
        values = [row[k] for row in rows]
        try:
            if name == "path":
                out[name] = values
            elif name in ("loss", "weight"):
                out[name] = np.array(values, dtype=np.float64)
            elif name == "corrupted":
                out[name] = np.array(values, dtype=np.int64).astype(bool)
            else:
                out[name] = np.array(values, dtype=np.int64)
        except ValueError as exc:
            raise ValueError(f"{path}: malformed {name} column ({exc})") from None
    return out


def write_weight_function(path: str | os.PathLike[str], losses: Any, weights: Any) -> None:
    """Atomically write the learned weighting function sampled at ``losses`` (CSV).

    ``weights`` of shape (n,) gives the columns ``loss,weight``; of shape (n, K), one curve
    per class cluster of a class-aware net, ``loss,weight_cluster0,...`` (cluster 0 holds
    the largest classes).
    """
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().double()
    weights = np.asarray(weights)
    curves = weights.reshape(len(weights), -1) if weights.ndim == 2 else weights[:, None]
    names = _weight_function_columns(curves.shape[1] if weights.ndim == 2 else None)
    columns = _columns(names, (losses, *curves.T))
    with atomic_write(path) as f:
        f.write(",".join(names) + "\n")
        rows = zip(*(columns[name].astype(np.float64).tolist() for name in names), strict=True)
        f.writelines(",".join(f"{v:.6g}" for v in row) + "\n" for row in rows)


def read_weight_function(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read :func:`write_weight_function` output as ``(losses, weights)``: weights of shape
    (n,) for one curve, (n, K) for one curve per class cluster."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        first = f.readline().strip().split(",")
    clusters = len(first) - 1 if first[1:2] == ["weight_cluster0"] else None
    table = _read_csv(path, _weight_function_columns(clusters))
    return table[:, 0], (table[:, 1] if clusters is None else table[:, 1:])


def _weight_function_columns(clusters: int | None) -> tuple[str, ...]:
    if clusters is None:
        return WEIGHT_FUNCTION_COLUMNS
    return ("loss", *(f"weight_cluster{k}" for k in range(clusters)))


def _columns(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, np.ndarray]:
    columns = {name: _as_1d_array(name, value) for name, value in zip(names, values, strict=True)}
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have one length, got {lengths}")
    return columns


def _as_1d_array(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on an accelerator
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    return array


def _read_csv(path: str | os.PathLike[str], header: tuple[str, ...]) -> np.ndarray:
    path = Path(path)
    first, _, body = path.read_text(encoding="utf-8").partition("\n")
    if tuple(first.strip().split(",")) != header:
        raise ValueError(f"{path}: expected the header {','.join(header)!r}, got {first!r}")
    if not body.strip():
        return np.empty((0, len(header)))
    try:
        table = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: malformed row ({exc})") from exc
    if table.shape[1] != len(header):
        raise ValueError(f"{path}: rows have {table.shape[1]} fields, expected {len(header)}")
    return table
