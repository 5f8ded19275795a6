"""Faults at the edges of a run: a disk that fills up or a file size limit while a
checkpoint or the end-of-run files are written, a reader that closes the pipe, a run
directory missing its history, config values no library takes, and what a finished run
says when it is resumed."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_data import write_idx
from omegaconf import OmegaConf
from reliability import Row, covers, covers_each
from test_loop import tiny_overrides

import mwnet
import mwnet.run.checkpoint as checkpoint_module
from mwnet.cli import main
from mwnet.run import load_checkpoint, read_json, read_jsonl
from mwnet.train import loop
from mwnet.train.config import load_config

PRESET = "fmnist-flip2-40"


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _argv(root: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    base = tiny_overrides(root, out, "r", "ce")
    return ["train", "--preset", PRESET, "--quiet", *base, f"optim.epochs={epochs}", *extra]


def _error_line(capsys, code: int) -> str:
    """The one `mwnet: error:` line a user error ends in (exit code 2, no traceback)."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("mwnet: error:") == 1, err
    (line,) = [line for line in err.splitlines() if line.startswith("mwnet: error:")]
    assert err.rstrip("\n").endswith(line), err  # nothing after it
    return line


def _one_epoch_of_two(root: Path, out: Path) -> Path:
    """A run with epoch 1 of 2 saved, its lock given back."""
    cfg = load_config(PRESET, [*tiny_overrides(root, out, "r", "ce"), "optim.epochs=2"])
    trainer, run_dir = loop.start(cfg, quiet=True)
    trainer.fit(stop_after=1)
    trainer.close()
    return run_dir


def _temporaries(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --- a full disk or a file size limit while a checkpoint is written -----------------------


def _full_disk(envelope, f):
    f.write(b"PK\x03\x04 partial")
    raise RuntimeError(
        "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
        "data/3: file write failed"
    )


def _file_size_limit(envelope, f):
    f.write(b"PK\x03\x04 partial")
    try:  # what torch's zip writer does when the file under it refuses a write
        raise OSError(errno.EFBIG, "File too large")
    except OSError:  # torch raises while handling it: the OSError is only the __context__
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904


TORCH_WRITER_FAILURES = [
    Row(
        "state damage",
        "the disk fills up inside torch's zip writer while a checkpoint is saved (a "
        "RuntimeError 'file write failed', not an OSError)",
        "mwnet: error: cannot save epoch 2 in RUN (..., writing checkpoint.pt); epoch 1's "
        "checkpoint is intact: ..., then mwnet train --resume RUN",
        (_full_disk, "the file could not be written"),
    ),
    Row(
        "state damage",
        "a file size limit (ulimit -f: EFBIG) inside torch's zip writer while a checkpoint "
        "is saved",
        "mwnet: error: cannot save epoch 2 in RUN (File too large, writing checkpoint.pt); "
        "epoch 1's checkpoint is intact ...",
        (_file_size_limit, "File too large"),
    ),
]


@covers_each(TORCH_WRITER_FAILURES)
def test_torch_writer_failure_during_save(row, fmnist_root, tmp_path, monkeypatch, capsys):
    failing_save, cause = row.args
    run_dir = _one_epoch_of_two(fmnist_root, tmp_path)
    kept = (run_dir / loop.CHECKPOINT).read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    line = _error_line(capsys, main(["train", "--resume", str(run_dir), "--quiet"]))
    assert line.startswith(f"mwnet: error: cannot save epoch 2 in {run_dir} ({cause}"), line
    assert "writing checkpoint.pt); epoch 1's checkpoint is intact" in line, line
    assert line.endswith(f"then mwnet train --resume {run_dir}"), line
    monkeypatch.undo()
    assert (run_dir / loop.CHECKPOINT).read_bytes() == kept  # the previous one, whole
    assert _temporaries(run_dir) == []
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert read_json(run_dir / "summary.json")["epochs_done"] == 2
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


@covers(
    "state damage",
    "a real file size limit (ulimit -f, SIGXFSZ) reached by the first checkpoint of a new run",
    "mwnet: error: cannot save epoch 1 in RUN (File too large, writing checkpoint.pt); "
    "nothing was saved: ..., then start it again; exit 2, the run directory removed",
)
def test_file_size_limit_in_a_real_process(fmnist_root, tmp_path):
    def limit_file_size():  # ulimit -f 100: config.yaml and metrics fit, the checkpoint not
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "mwnet", *_argv(fmnist_root, tmp_path)]
    done = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    last = done.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"mwnet: error: cannot save epoch 1 in {tmp_path / 'r'} (File too"), (
        done.stderr
    )
    assert "writing checkpoint.pt); nothing was saved" in last, last
    assert not (tmp_path / "r").exists()  # no half-made run directory


# --- a full disk while the other files are written ------------------------------------


def _fsync_fails_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``os.fsync`` of a file named ``name`` (or of the temporary file written for it)
    fails as on a full disk, without naming the file, as the kernel reports it."""
    fsync = os.fsync

    def full(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if target == name or target.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


FULL_DISK_FILES = [
    Row(
        "state damage",
        "the disk fills up while metrics.jsonl gets the first epoch's line",
        "mwnet: error: cannot save epoch 1 in RUN (No space left on device, writing "
        "metrics.jsonl); nothing was saved ...; the run directory removed",
        ("metrics.jsonl", "cannot save epoch 1", "writing metrics.jsonl); nothing was saved"),
    ),
    Row(
        "state damage",
        "the disk fills up while signals.npz is written, after the epoch's checkpoint",
        "mwnet: error: cannot save epoch 1 in RUN (No space left on device, writing "
        "signals.npz); epoch 1's checkpoint is saved ... mwnet train --resume RUN",
        ("signals.npz", "cannot save epoch 1", "writing signals.npz); epoch 1's checkpoint is"),
    ),
    Row(
        "state damage",
        "the disk fills up while summary.json is written after an epoch",
        "mwnet: error: cannot save epoch 1 in RUN (No space left on device, writing "
        "summary.json); epoch 1's checkpoint is saved ...",
        ("summary.json", "cannot save epoch 1", "writing summary.json); epoch 1's checkpoint is"),
    ),
    Row(
        "state damage",
        "the disk fills up while the model file is written at the end (model.pt)",
        "mwnet: error: cannot write the end-of-run files of RUN (No space left on device, "
        "writing model.pt); its 1 epoch is saved: ..., then mwnet train --resume RUN "
        "writes them",
        ("model.pt", "cannot write the end-of-run files", "writing model.pt); its 1 epoch"),
    ),
    Row(
        "state damage",
        "the disk fills up while the final plots are drawn (accuracy.png)",
        "mwnet: error: cannot write the end-of-run files of RUN (No space left on device, "
        "writing accuracy.png); its 1 epoch is saved: ..., then mwnet train --resume RUN "
        "writes them",
        ("accuracy.png", "cannot write the end-of-run files", "writing accuracy.png); its 1 epoch"),
    ),
]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
@covers_each(FULL_DISK_FILES)
def test_full_disk_names_the_file(row, fmnist_root, tmp_path, monkeypatch, capsys):
    name, what, where = row.args
    run_dir = tmp_path / "r"
    _fsync_fails_for(monkeypatch, name)
    line = _error_line(capsys, main(_argv(fmnist_root, tmp_path)))
    assert line.startswith(f"mwnet: error: {what} "), line
    assert f"{run_dir} (No space left on device, {where}" in line, line
    monkeypatch.undo()
    if name == "metrics.jsonl":  # nothing saved: the new run's directory is removed
        assert not run_dir.exists()
        return
    at_end = name.endswith(".png") or name == "model.pt"
    assert line.endswith(f"mwnet train --resume {run_dir}" + (" writes them" * at_end))
    assert _temporaries(run_dir) == []
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["epoch"] == 1
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    summary = read_json(run_dir / "summary.json")
    assert summary["finished"] and summary["epochs_done"] == 1
    assert (run_dir / "accuracy.png").is_file() and (run_dir / "model.pt").is_file()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
@covers(
    "state damage",
    "the disk fills up while mwnet issues writes label_issues.csv",
    "mwnet: error: [Errno 28] No space left on device: 'RUN/label_issues.csv'",
)
def test_full_disk_in_the_label_issue_report(fmnist_root, tmp_path, monkeypatch, capsys):
    assert main(_argv(fmnist_root, tmp_path)) == 0
    capsys.readouterr()
    _fsync_fails_for(monkeypatch, "label_issues.csv")
    line = _error_line(capsys, main(["issues", str(tmp_path / "r")]))
    assert line == (
        f"mwnet: error: [Errno 28] No space left on device: '{tmp_path / 'r' / 'label_issues.csv'}'"
    )


@covers(
    "state damage",
    "the disk holding the image cache fills up (torch's writer raises RuntimeError) after "
    "a folder of images is decoded",
    "a warning 'could not write the decoded images to the cache FILE (...); continuing "
    "without it'; the data loads",
)
def test_full_cache_disk_is_not_fatal(tmp_path, monkeypatch):
    from fake_data import write_image_folder

    import mwnet.data.image_folder as image_folder

    root = write_image_folder(tmp_path / "images")
    monkeypatch.setattr(image_folder.torch, "save", _full_disk)
    with pytest.warns(UserWarning, match="could not write the decoded images to the cache"):
        data = image_folder.load_image_folder(root / "train", 8)
    assert len(data.labels) > 0
    cached = list((tmp_path / "cache").rglob("*"))  # XDG_CACHE_HOME: conftest's
    assert not [p for p in cached if p.is_file()], cached  # no partial file left


# --- a closed pipe ----------------------------------------------------------------------


@covers(
    "interrupts",
    "mwnet train --show-config | head -1 (the reader closes the pipe)",
    "the config printed, nothing trained and no run directory made; exit 0, nothing on stderr",
)
def test_show_config_into_a_closed_pipe(fmnist_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "mwnet", *_argv(fmnist_root, tmp_path), "--show-config"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
    assert not tmp_path.joinpath("r").exists()


@covers(
    "bad input",
    "mwnet train --show-config",
    "the resolved config on stdout, then exit 0: no run directory, no data read",
)
def test_show_config_prints_and_exits(fmnist_root, tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("--show-config read the data")

    monkeypatch.setattr(loop, "build_experiment", no_data)
    assert main([*_argv(fmnist_root, tmp_path, "seed=3"), "--show-config"]) == 0
    shown = OmegaConf.create(capsys.readouterr().out)
    assert shown.seed == 3 and shown.optim.epochs == 1 and shown.name == "r"
    assert not tmp_path.joinpath("r").exists()


@covers(
    "interrupts",
    "mwnet train ... 2>&1 | head: the reader closes the pipe during the first epoch",
    "training stops, exit 141 (as SIGPIPE), the new run's directory removed",
)
def test_closed_pipe_while_training(fmnist_root, tmp_path, monkeypatch, capsys):
    def closed(self):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")  # as tqdm's write would

    monkeypatch.setattr(loop.Trainer, "_train_epoch", closed)
    # capsys: the streams main() points at /dev/null on a broken pipe are pytest's, not fd 1/2
    assert main(_argv(fmnist_root, tmp_path)) == 141
    assert not tmp_path.joinpath("r").exists()
    assert capsys.readouterr().out == ""


# --- a run directory without its history ----------------------------------------------


@covers(
    "damaged files",
    "metrics.jsonl deleted from a run with saved epochs, then --resume",
    "mwnet: error: RUN/metrics.jsonl is missing, but RUN/checkpoint.pt holds 1 trained "
    "epoch: resuming would lose their history; restore the file ..., or start a new run",
)
def test_resume_without_metrics_is_refused(fmnist_root, tmp_path, monkeypatch, capsys):
    run_dir = _one_epoch_of_two(fmnist_root, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    kept = (run_dir / loop.CHECKPOINT).read_bytes()

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(loop, "build_experiment", no_data)
    line = _error_line(capsys, main(["train", "--resume", str(run_dir), "--quiet"]))
    assert line.startswith(f"mwnet: error: {run_dir / 'metrics.jsonl'} is missing, but "), line
    assert "holds 1 trained epoch: resuming would lose their history; restore the file" in line
    assert (run_dir / loop.CHECKPOINT).read_bytes() == kept
    assert not (run_dir / "metrics.jsonl").exists()


# --- a finished run, resumed ----------------------------------------------------------


def _run_files(run_dir: Path) -> list[Path]:
    """What a run wrote (not the lock file, which every claim rewrites)."""
    return [p for p in run_dir.iterdir() if p.name != ".lock"]


@covers(
    "stale results",
    "mwnet train --resume on a run that has finished",
    "'RUN is already finished (1 epoch trained, its files written); nothing to do ...', "
    "exit 0, no file rewritten",
)
def test_resuming_a_finished_run_does_nothing(fmnist_root, tmp_path, capsys):
    assert main(_argv(fmnist_root, tmp_path)) == 0
    run_dir = tmp_path / "r"
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in _run_files(run_dir)}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{run_dir} is already finished (1 epoch trained, its files written); nothing to "
        f"do. To train it longer, raise optim.epochs in {run_dir / loop.CONFIG} and resume "
        "with --allow-change optim.epochs\n"
    )
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in _run_files(run_dir)}
    assert after == files


# --- what a run records and prints -------------------------------------------------------


@covers(
    "mixed runs",
    "a checkpoint or summary.json read later: which mwnet wrote it",
    "mwnet_version in checkpoint.pt and summary.json (mwnet.__version__, the package's)",
)
def test_the_version_is_recorded(fmnist_root, tmp_path):
    from importlib.metadata import version

    assert mwnet.__version__ == version("mwnet")
    run_dir = _one_epoch_of_two(fmnist_root, tmp_path)
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["mwnet_version"] == mwnet.__version__
    assert read_json(run_dir / "summary.json")["mwnet_version"] == mwnet.__version__


def test_train_ends_with_one_line_of_results(fmnist_root, tmp_path, capsys):
    assert main(_argv(fmnist_root, tmp_path)) == 0
    out, err = capsys.readouterr()
    summary = read_json(tmp_path / "r" / "summary.json")
    assert out == (
        f"ce: 1 epoch, test accuracy {summary['last_test_acc']:.2f}%, "
        f"{summary['wall_time']:.1f} s\n"
    )
    assert "model cnn_small, 1 epoch, on cpu" in err  # not "1 epochs"
    assert f"summary: {tmp_path / 'r' / 'summary.json'}" in err


def test_eval_rounds_percentages(fmnist_root, tmp_path, capsys):
    import json

    assert main(_argv(fmnist_root, tmp_path)) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 0
    scores = json.loads(capsys.readouterr().out)
    last = read_jsonl(tmp_path / "r" / "metrics.jsonl")[-1]
    for key in ("test_acc", "train_acc", "train_acc_clean", "train_acc_corrupted"):
        assert scores[key] == round(last[key], 2), key
    assert all(len(str(v).split(".")[-1]) <= 2 for v in scores.values() if isinstance(v, float))


# --- config values no library takes -----------------------------------------------------


CONFIG_VALUES = [
    Row(
        "bad input",
        "seed=1180591620717411303424 (beyond int64)",
        "mwnet: error: seed=1180591620717411303424 is out of range: integers must lie in "
        "[-2**63, 2**63 - 1]",
        ("seed=1180591620717411303424",),
    ),
    Row(
        "bad input",
        "optim.milestones=[99999999999999999999]",
        "mwnet: error: optim.milestones[0]=99999999999999999999 is out of range ...",
        ("optim.milestones=[99999999999999999999]",),
    ),
    Row(
        "bad input",
        "threads=99999999999",
        "mwnet: error: threads=99999999999 is out of range: at most 2**31 - 1",
        ("threads=99999999999",),
    ),
    Row(
        "bad input",
        "optim.gamma=0 (or negative)",
        "mwnet: error: optim.gamma=0.0 must be > 0: each milestone multiplies the learning "
        "rate by it (0.1: a tenth)",
        ("optim.gamma=0",),
    ),
    Row(
        "bad input",
        "method.teacher.freeze_epoch=-1",
        "mwnet: error: method.teacher.freeze_epoch=-1 must be >= 0 (null: never frozen)",
        ("method.name=mwnet-sl", "method.teacher.freeze_epoch=-1"),
    ),
    Row(
        "bad input",
        "optim.lr=abc",
        "mwnet: error: optim.lr=abc is not valid: expected a number, e.g. optim.lr=0.1",
        ("optim.lr=abc",),
    ),
    Row(
        "bad input",
        "data.batch_size=1e3 (a float for an integer)",
        "mwnet: error: data.batch_size=1e3 is not valid: expected an integer, e.g. "
        "data.batch_size=100",
        ("data.batch_size=1e3",),
    ),
    Row(
        "bad input",
        "optim.milestones=abc",
        "mwnet: error: optim.milestones=abc is not valid: expected a list of integers, e.g. "
        "optim.milestones=[40, 50]",
        ("optim.milestones=abc",),
    ),
    Row(
        "bad input",
        "a misspelt key in a group (optim.epoch=3)",
        "mwnet: error: unknown config key 'optim.epoch' (did you mean 'optim.epochs'?); "
        "valid keys of optim: lr, momentum, nesterov, weight_decay, epochs, schedule, "
        "milestones, gamma",
        ("optim.epoch=3",),
    ),
]


@covers_each(CONFIG_VALUES)
def test_config_values_named_at_load(row, fmnist_root, tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(loop, "build_experiment", no_data)
    line = _error_line(capsys, main(_argv(fmnist_root, tmp_path, *row.args)))
    assert line == row.sees.removesuffix(" ...") or (
        row.sees.endswith(" ...") and line.startswith(row.sees.removesuffix(" ..."))
    ), line
    assert not tmp_path.joinpath("r").exists()


def test_largest_seed_trains(fmnist_root, tmp_path):
    """The bound is the one torch and numpy take: 2**63 - 1 itself trains."""
    cfg = load_config(
        PRESET, [*tiny_overrides(fmnist_root, tmp_path, "big", "ce"), f"seed={2**63 - 1}"]
    )
    trainer, _ = loop.start(cfg, quiet=True)
    assert trainer.fit(stop_after=1)["epochs_done"] == 1
    trainer.close()
    loss = read_jsonl(tmp_path / "big" / "metrics.jsonl")[0]["train_loss"]
    assert torch.isfinite(torch.tensor(loss))
