"""Checkpoints: atomic saves, and a clear one-line CheckpointError for every bad file."""

from __future__ import annotations

import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from reliability import covers

from mwnet.run.atomic import remove_stale_temporaries
from mwnet.run.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

TAMPERING = (
    "refused to load: it contains objects that are not plain tensors/containers "
    "(possible tampering)"
)


class RunsShellCommand:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (os.system, ("echo pwned > marker",))


def training_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(8, 3)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(123)
    return {
        "epoch": 7,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "batches": generator.get_state()},
        "best_acc": 0.8125,
        "name": "cifar10-uniform-40",
        "finished": False,
        "note": None,
        "history": [1, 2.5, "x", [True, None]],
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, training_state())
    return path


def test_round_trip_restores_every_value(saved: Path) -> None:
    state = load_checkpoint(saved)
    assert_same(training_state(), state)
    generator = torch.Generator()
    generator.set_state(state["rng"]["batches"])
    expected = torch.Generator().manual_seed(123)
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=expected))


def test_saved_file_carries_the_format_marker(saved: Path) -> None:
    raw = torch.load(saved, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1
    assert raw["state"]["epoch"] == 7


def test_save_leaves_only_the_checkpoint(saved: Path) -> None:
    save_checkpoint(saved, {"epoch": 8})
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(saved) == {"epoch": 8}


def test_state_must_be_a_dict(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])  # type: ignore[arg-type]


@covers(
    "damaged files",
    "truncated checkpoint (cut anywhere)",
    "one-line CheckpointError: truncated or corrupt, delete it or restart",
)
@pytest.mark.parametrize("keep", [0, 1, 4, 100, 0.5, -200, -22, -1])
def test_truncated_file_is_reported_as_corrupt(saved: Path, keep: float) -> None:
    data = saved.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    saved.write_bytes(data[:cut])
    assert "truncated or corrupt" in load_error(saved)


@covers(
    "damaged files",
    "one flipped bit in a checkpoint's tensor data",
    "CheckpointError: checksum mismatch (torch.load alone would load wrong weights)",
)
def test_flipped_bit_in_tensor_data_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.zeros(4096)})
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    payload_start = info.header_offset + 30 + name_len + extra_len
    data[payload_start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = load_error(path)
    assert "truncated or corrupt" in message and "checksum" in message


@covers(
    "damaged files",
    "random bytes as checkpoint",
    "CheckpointError: truncated or corrupt",
)
@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_reported_as_corrupt(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    assert "truncated or corrupt" in load_error(path)


@covers(
    "damaged files",
    "a valid torch file that is not an mwnet checkpoint (bare state_dict, tensor)",
    "CheckpointError: not an mwnet checkpoint",
)
@pytest.mark.parametrize(
    "foreign",
    [
        {"model": {"weight": torch.ones(2)}, "epoch": 3},
        torch.nn.Linear(2, 2).state_dict(),
        torch.ones(3),
    ],
    ids=["plain-dict", "state-dict", "tensor"],
)
def test_foreign_torch_file_is_not_a_checkpoint(tmp_path: Path, foreign) -> None:
    path = tmp_path / "c.pt"
    torch.save(foreign, path)
    message = load_error(path)
    assert "not an mwnet checkpoint" in message and "torch.load" in message


@covers(
    "damaged files",
    "a checkpoint pickle that would run code (os.system)",
    "CheckpointError: refused (possible tampering); the code never runs",
)
@pytest.mark.parametrize(
    "write",
    [
        lambda path: path.write_bytes(pickle.dumps(RunsShellCommand())),
        lambda path: path.write_bytes(pickle.dumps(RunsShellCommand(), protocol=2)),
        lambda path: torch.save({"x": RunsShellCommand()}, path),
        lambda path: torch.save(
            {"format": CHECKPOINT_FORMAT, "version": 1, "state": {"x": RunsShellCommand()}},
            path,
        ),
    ],
    ids=["bare-pickle", "bare-pickle-protocol-2", "torch-zip", "inside-envelope"],
)
def test_pickle_that_runs_code_is_refused_and_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "c.pt"
    write(path)
    assert TAMPERING in load_error(path)
    assert not (tmp_path / "marker").exists()


@covers(
    "damaged files",
    "a checkpoint of an unknown format version",
    "CheckpointError naming the version",
)
def test_wrong_version_names_the_version(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 2, "state": {}}, path)
    message = load_error(path)
    assert "version 2 is not supported" in message


@covers(
    "damaged files",
    "a checkpoint path that does not exist",
    "CheckpointError: no such checkpoint",
)
def test_missing_file(tmp_path: Path) -> None:
    assert "no such checkpoint" in load_error(tmp_path / "nope.pt")


@covers(
    "damaged files",
    "a checkpoint path that is a directory",
    "CheckpointError: a directory, not a checkpoint file",
)
def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "a directory, not a checkpoint file" in load_error(tmp_path)


@covers(
    "interrupts",
    "a crash between writing and renaming a checkpoint",
    "the previous checkpoint is intact, no temporary file is left",
)
def test_crash_before_rename_keeps_previous_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(saved, {"epoch": 99})
    monkeypatch.undo()
    assert load_checkpoint(saved)["epoch"] == 7
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint.pt"]


@covers(
    "interrupts",
    "Ctrl-C in the middle of writing a checkpoint",
    "the previous checkpoint is intact, no temporary file is left",
)
def test_interrupt_during_write_keeps_previous_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(saved, {"epoch": 99})
    monkeypatch.undo()
    assert load_checkpoint(saved)["epoch"] == 7
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint.pt"]


@covers(
    "damaged files",
    "a checkpoint path that is a device or a pipe (/dev/zero, a FIFO): reading never ends",
    "CheckpointError at once: not a regular file",
)
@pytest.mark.skipif(os.name != "posix", reason="POSIX devices and FIFOs")
def test_device_or_pipe_instead_of_file(tmp_path: Path) -> None:
    assert "not a regular file" in load_error(Path("/dev/zero"))
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    assert "not a regular file" in load_error(fifo)


@covers(
    "interrupts",
    "a process killed during an atomic write leaves .<name>.<pid>.<hex>.tmp behind",
    "removed by the next process that locks the run directory; other files are kept",
)
def test_stale_temporaries_are_removed(saved: Path) -> None:
    run = saved.parent
    stale = [run / ".checkpoint.pt.4242.0badf00d.tmp", run / ".summary.json.7.deadbeef.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    kept = [run / "notes.tmp", run / ".hidden", run / ".checkpoint.pt.x.0badf00d.tmp"]
    for path in kept:
        path.write_text("mine")
    assert sorted(remove_stale_temporaries(run)) == sorted(stale)
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoint.pt", *(p.name for p in kept)]
    )
    assert load_checkpoint(saved)["epoch"] == 7
