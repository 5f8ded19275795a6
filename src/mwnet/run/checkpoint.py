"""Training checkpoints that are written atomically and loaded without running code.

A checkpoint is written with ``torch.save`` inside a small envelope,
``{"format": "mwnet-checkpoint", "version": 1, "state": state}``, so that loading can tell
our files from any other torch file and refuse a format it does not understand instead
of resuming from half-matching state. Loading always uses ``weights_only=True``: a
checkpoint is a pickle, and an unrestricted unpickle of a file someone handed you can
run arbitrary code. Every way loading can fail becomes one :class:`CheckpointError`
whose single-line message names the file, the cause and the fix, because a resume that
fails is read by a person at a terminal.
"""

from __future__ import annotations

import errno
import os
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mwnet.run.atomic import atomic_write
from mwnet.run.interrupt import interrupt_deferred

CHECKPOINT_NAME = "checkpoint.pt"
"""The checkpoint's name in a run directory."""
CHECKPOINT_FORMAT = "mwnet-checkpoint"
CHECKPOINT_VERSION = 1

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "FileKind",
    "interrupt_deferred",
    "load_checkpoint",
    "read_torch_file",
    "save_checkpoint",
    "write_torch_file",
]

# Pickle opcodes that name a Python object to import or call: the only way a pickle can
# run code. A bare pickle containing them is not data we would ever write.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ"})


class CheckpointError(RuntimeError):
    """A checkpoint could not be loaded; the message says which file, why, and what to do."""


@dataclass(frozen=True)
class FileKind:
    """How the one-line errors of :func:`read_torch_file` name a kind of file and what
    they advise: each kind of mwnet file has its own remedy."""

    noun: str
    """``checkpoint``, ``model file``, ..."""
    missing: str
    """What to do when there is no such file."""
    point: str
    """What to point at instead of a directory or a device."""
    trusted: str
    """What to do with a file that holds more than tensors and containers."""
    damaged: str
    """What to do with a truncated or corrupt file."""
    error: type[CheckpointError] = CheckpointError


CHECKPOINT_FILE = FileKind(
    noun="checkpoint",
    missing="check the path, or start the run without resuming",
    point="point at a checkpoint",
    trusted="only load checkpoints from a source you trust, or restart the run",
    damaged="delete it and resume from an earlier checkpoint, or restart the run",
)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous checkpoint whole.

    ``state`` must hold only tensors, (nested) dicts, lists and tuples, and plain
    ``int``/``float``/``str``/``bool``/``None``, i.e. what ``torch.load(weights_only=True)``
    accepts; convert anything else (numpy or Python RNG states, say) to tensors first.
    Wrap the call in :func:`interrupt_deferred` to keep Ctrl-C from discarding the epoch.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, not {type(state).__name__}")
    envelope = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state": state}
    write_torch_file(path, envelope)


def write_torch_file(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """``torch.save(obj)`` to ``path`` atomically; a failed write (a full disk) is the
    ``OSError`` naming ``path`` that it was, not torch's ``RuntimeError``."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as err:
        failed = _write_failure(path, err)
        if failed is None:
            raise
        raise failed from err


_WRITE_FAILED = ("write failed", "failed writing", "unexpected pos")
"""What torch's zip writer says when the file under it stopped taking bytes."""


def _write_failure(path: str | os.PathLike[str], err: RuntimeError) -> OSError | None:
    """The ``OSError`` behind a ``RuntimeError`` of torch's zip writer, naming ``path``.

    torch turns a failed write (a full disk, ``ulimit -f``) into a ``RuntimeError``
    ("PytorchStreamWriter failed writing file data/0: file write failed", "unexpected pos
    ..."): it is the file system's error, not a bug, so it is raised as the ``OSError`` it
    was, or as ``EIO`` where torch kept only its own message. None: not a write failure.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return OSError(seen.errno, seen.strerror or os.strerror(seen.errno), os.fspath(path))
        seen = seen.__cause__ or seen.__context__
    if any(marker in str(err).lower() for marker in _WRITE_FAILED):
        detail = f"the file could not be written ({_one_line(err)})"
        return OSError(errno.EIO, detail, os.fspath(path))
    return None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``state`` dict saved by :func:`save_checkpoint`, with all tensors on CPU.

    Raises:
        CheckpointError: the file is missing or unreadable, truncated or corrupt, not an
            mwnet checkpoint, of an unsupported format version, or contains objects other
            than tensors and plain containers (a pickle that would run code).
    """
    path = Path(path)
    return _unwrap(path, read_torch_file(path, CHECKPOINT_FILE))


def read_torch_file(path: Path, kind: FileKind) -> object:
    """What ``torch.load(path, weights_only=True)`` reads, on the CPU, after checking that
    the file is there, readable and (a zip archive) intact.

    Raises:
        kind.error: one line naming the file, the cause and ``kind``'s remedy, for a
            missing or unreadable file, a truncated or corrupt one, or one holding objects
            other than tensors and plain containers (a pickle that would run code).
    """
    _check_readable(path, kind)
    if zipfile.is_zipfile(path):
        _check_zip_integrity(path, kind)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before rejecting such files;
            # the error below is the message that matters.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _classify_load_failure(path, exc, kind) from exc


def _check_readable(path: Path, kind: FileKind) -> None:
    if not path.exists():
        raise kind.error(f"{path}: no such {kind.noun}; {kind.missing}")
    if not path.is_file():  # a directory, or a device or pipe that never ends (/dev/zero)
        what = "a directory" if path.is_dir() else "not a regular file"
        raise kind.error(f"{path}: {what}, not a {kind.noun} file; {kind.point}")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise kind.error(
            f"{path}: cannot read the {kind.noun} ({exc.strerror or exc}); "
            "check that it is a file and that you may read it"
        ) from exc


def _check_zip_integrity(path: Path, kind: FileKind) -> None:
    """Verify every member's CRC, which ``torch.load`` does not do.

    Without this a flipped bit in the tensor data loads silently as wrong weights.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _corrupt(path, f"damaged zip archive: {_one_line(exc)}", kind) from exc
    if bad_member is not None:
        raise _corrupt(path, f"checksum mismatch in {bad_member!r}", kind)


def _classify_load_failure(path: Path, exc: Exception, kind: FileKind) -> CheckpointError:
    # torch's restricted unpickler names the rejected import: "Unsupported global: GLOBAL
    # posix.system ..." (plain pickles fail earlier, on an opcode, and are scanned instead).
    if "GLOBAL" in str(exc):
        return _refused(path, kind)
    if not zipfile.is_zipfile(path) and _bare_pickle_names_code(path):
        return _refused(path, kind)
    return _corrupt(path, _one_line(exc), kind)


def _bare_pickle_names_code(path: Path) -> bool:
    """True if ``path`` is a well-formed plain pickle that imports or calls something.

    ``pickletools.genops`` only decodes opcodes; it never imports or calls anything. All
    opcodes are decoded before judging, so random bytes that happen to start like a
    GLOBAL opcode are reported as corrupt, not as tampering.
    """
    try:
        with path.open("rb") as f:
            names = [op.name for op, _, _ in pickletools.genops(f)]
    except Exception:
        return False
    return any(name in _CODE_OPCODES for name in names)


def _unwrap(path: Path, obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        what = "a dict without" if isinstance(obj, dict) else f"a {type(obj).__name__}, not"
        raise CheckpointError(
            f"{path}: not an mwnet checkpoint (a valid torch file, but {what} the "
            f"{CHECKPOINT_FORMAT!r} marker, e.g. a bare state_dict); load it with torch.load, "
            "or point at a checkpoint written by mwnet"
        )
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported (this mwnet "
            f"reads version {CHECKPOINT_VERSION}); use the mwnet version that wrote it, "
            "or restart the run"
        )
    state = obj.get("state")
    if not isinstance(state, dict):
        raise _corrupt(path, f"its state is a {type(state).__name__}, not a dict", CHECKPOINT_FILE)
    return state


def _refused(path: Path, kind: FileKind) -> CheckpointError:
    return kind.error(
        f"{path}: refused to load: it contains objects that are not plain tensors/containers "
        f"(possible tampering); {kind.trusted}"
    )


def _corrupt(path: Path, cause: str, kind: FileKind) -> CheckpointError:
    return kind.error(f"{path}: {kind.noun} is truncated or corrupt ({cause}); {kind.damaged}")


_NOISE_PREFIXES = ("weights only load failed", "please file an issue", "check the documentation")


def _one_line(exc: BaseException) -> str:
    """The informative part of an exception message, on one short line.

    torch's messages span many lines of generic advice around the one line that says
    what is wrong; that line is what goes into the CheckpointError.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.lower().startswith(_NOISE_PREFIXES)]
    detail = lines[0].split(". This is an internal miniz error")[0] if lines else ""
    detail = detail.removeprefix("WeightsUnpickler error:").strip()
    if len(detail) > 120:
        detail = detail[:117] + "..."
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else f"{name}: file ends early"
