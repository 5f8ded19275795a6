"""Every user error on the command line is one `mwnet: error: ...` line and exit code 2;
an interruption is one line too; a bug is a traceback and a line asking to report it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_idx
from reliability import Row, covers, covers_each
from test_loop import tiny_overrides

from mwnet.cli import main
from mwnet.run.interrupt import Terminated
from mwnet.run.lock import RunLock
from mwnet.train import loop

PRESET = "fmnist-flip2-40"


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    base = tiny_overrides(root, out, "r", "ce")
    return ["train", "--preset", PRESET, "--quiet", *base, "optim.epochs=1", *extra]


def _exit_code(argv: list[str]) -> int:
    """What `mwnet ARGV` exits with (argparse's own errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def _one_error_line(capsys, code: int, expected: str) -> str:
    """The error line: the only one, last but for indented details (where data was
    looked for), after whatever a new run printed before it failed (its config)."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("mwnet: error:") == 1, err
    lines = err.rstrip("\n").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("mwnet: error: "))
    assert all(line.startswith("  ") for line in lines[at + 1 :]), err
    assert expected in lines[at], err
    return "\n".join(lines[at:])


TRAIN_ERRORS = [
    Row(
        "bad input",
        "device=tpu",
        "device='tpu' is not a device mwnet can train on",
        ("device=tpu",),
    ),
    Row("bad input", "device=cuda:abc", "is not a device mwnet can train on", ("device=cuda:abc",)),
    Row("bad input", "threads=-2", "threads=-2 must be >= 1", ("threads=-2",)),
    Row("bad input", "threads=0", "threads=0 must be >= 1", ("threads=0",)),
    Row("bad input", "optim.lr=nan", "optim.lr=nan is not a finite number", ("optim.lr=nan",)),
    Row(
        "bad input",
        "distributed.timeout=inf",
        "distributed.timeout=inf is not a finite number",
        ("distributed.timeout=inf",),
    ),
    Row(
        "bad input",
        "data.eval_batch_size=0",
        "data.eval_batch_size must be >= 1",
        ("data.eval_batch_size=0",),
    ),
    Row(
        "bad input",
        "a model whose input size does not match the data (mlp for 32x32 on 28x28)",
        "model 'mlp' cannot take this data's 1x28x28 images",
        ("model.name=mlp", "model.options.image_size=32"),
    ),
    Row(
        "bad input",
        "a meta set that takes every training sample of a class",
        "data.meta_per_class=30 puts every sample of class 'T-shirt/top' into the meta set",
        ("data.meta_per_class=30",),
    ),
    Row(
        "bad input",
        "a learning rate that diverges (optim.lr=1e30)",
        "non-finite training loss at step",
        ("optim.lr=1e30",),
    ),
    Row(
        "bad input",
        "optim.milestones=[-1]",
        "optim.milestones=[-1]: milestones are epochs, each >= 1",
        ("optim.milestones=[-1]",),
    ),
    Row("bad input", "seed=-1", "seed must be a non-negative integer", ("seed=-1",)),
    Row("bad input", "optim.momentum=-1", "Invalid momentum value: -1.0", ("optim.momentum=-1",)),
    Row(
        "bad input",
        "model.options that do not fit the model (dropout=2)",
        "dropout probability has to be between 0 and 1",
        ("model.options.dropout=2.0",),
    ),
    Row("bad input", "an unknown model name", "unknown model 'nosuch'", ("model.name=nosuch",)),
    Row(
        "bad input",
        "method.mwnet.head without hypergrad=head",
        "method.mwnet.head names the layer of hypergrad=head",
        ("method.name=mwnet", "method.mwnet.head=fc"),
    ),
    Row(
        "bad input",
        "data.noise=matrix with a matrix file that does not exist",
        "cannot read transition matrix",
        ("data.noise=matrix", "data.noise_matrix=/nonexistent.npy"),
    ),
    Row(
        "bad input",
        "method.mwnet.net_from=/dev/zero",
        "/dev/zero: not a regular file",
        ("method.name=mwnet", "method.mwnet.net_from=/dev/zero"),
    ),
    Row(
        "bad input",
        "amp=bf16 on the CPU",
        "amp=bf16 needs a CUDA device",
        ("amp=bf16",),
    ),
    Row(
        "bad input",
        "--allow-change on a new run",
        "--allow-change is for --resume RUN_DIR only",
        ("--allow-change", "optim.epochs"),
    ),
    Row(
        "bad input",
        "an unknown flag",
        "unrecognized arguments: --bogus (see `mwnet --help`)",
        ("--bogus",),
    ),
    Row(
        "bad input",
        "a malformed flag value (--allow-change with no key)",
        "argument --allow-change: expected one argument",
        ("--allow-change",),
    ),
]


@covers_each(TRAIN_ERRORS)
def test_bad_training_input_is_one_line(row, fmnist_root, tmp_path, capsys):
    code = _exit_code(_train_argv(fmnist_root, tmp_path, *row.args))
    _one_error_line(capsys, code, row.sees)
    assert not (tmp_path / "r").exists()  # no run directory left behind


@covers(
    "wrong data",
    "an explicit data.root that does not exist, data.download=false, while another copy "
    "exists elsewhere (Debian package, $MWNET_DATA)",
    "mwnet: error: Fashion-MNIST (train split) not found (download=False), listing only "
    "data.root; nothing is trained on the other copy",
)
def test_missing_explicit_root_is_not_replaced_by_another_copy(
    fmnist_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MWNET_DATA", str(fmnist_root.parent))
    (fmnist_root.parent / "fashion-mnist").symlink_to(fmnist_root)  # a copy elsewhere
    try:
        argv = _train_argv(fmnist_root, tmp_path, f"data.root={tmp_path / 'typo'}")
        code = main([*argv, "data.download=false"])
    finally:
        (fmnist_root.parent / "fashion-mnist").unlink()
    err = _one_error_line(capsys, code, "Fashion-MNIST (train split) not found (download=False)")
    assert str(tmp_path / "typo") in err and str(fmnist_root.parent) not in err


@covers(
    "wrong data",
    "an explicit data.root that lacks one file (the test labels) while a complete copy "
    "exists elsewhere",
    "mwnet: error: ROOT holds part of Fashion-MNIST but not its test split: missing "
    "t10k-labels-idx1-ubyte[.gz]",
)
def test_explicit_root_missing_one_file(fmnist_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MWNET_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "fashion-mnist").symlink_to(fmnist_root)
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in fmnist_root.iterdir():
        if not f.name.startswith("t10k-labels"):
            (partial / f.name).write_bytes(f.read_bytes())
    code = main(_train_argv(fmnist_root, tmp_path, f"data.root={partial}"))
    _one_error_line(capsys, code, "holds part of Fashion-MNIST but not its test split: missing")


@covers(
    "bad input",
    "key=value overrides placed after a flag (--quiet optim.epochs=1)",
    "accepted as overrides, wherever they stand",
)
def test_overrides_after_flags(fmnist_root, tmp_path, capsys):
    base = tiny_overrides(fmnist_root, tmp_path, "late", "ce")
    argv = ["train", base[0], "--preset", PRESET, *base[1:], "--quiet", "optim.epochs=1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert loop.run_config(tmp_path / "late").optim.epochs == 1


@covers(
    "mixed runs",
    "mwnet train --resume on a run directory another process holds",
    "mwnet: error: RUN is in use by mwnet pid N on HOST since TIME ...",
)
def test_resume_of_a_held_run(fmnist_root, tmp_path, capsys):
    assert main(_train_argv(fmnist_root, tmp_path)) == 0
    capsys.readouterr()
    with RunLock(tmp_path / "r"):
        code = main(["train", "--resume", str(tmp_path / "r")])
        _one_error_line(capsys, code, f"is in use by mwnet pid {os.getpid()}")


@covers(
    "mixed runs",
    "config.yaml edited (seed) before mwnet train --resume",
    "mwnet: error: RUN/config.yaml differs from the config the run was trained with (kept in "
    "its checkpoint): seed (0 -> 1) ...",
)
def test_resume_after_an_edit(fmnist_root, tmp_path, capsys):
    assert main(_train_argv(fmnist_root, tmp_path)) == 0
    config = tmp_path / "r" / loop.CONFIG
    config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    capsys.readouterr()
    code = main(["train", "--resume", str(tmp_path / "r"), "--quiet"])
    _one_error_line(
        capsys, code, "the run was trained with (kept in its checkpoint): seed (0 -> 1)"
    )
    code = main(["eval", str(tmp_path / "r")])  # evaluating it under the edit is refused too
    _one_error_line(capsys, code, "seed (0 -> 1)")


@covers(
    "damaged files",
    "mwnet eval --checkpoint /dev/zero (or a directory)",
    "mwnet: error: ... not a regular file / a directory, at once",
)
def test_eval_of_a_checkpoint_that_is_not_a_file(fmnist_root, tmp_path, capsys):
    assert main(_train_argv(fmnist_root, tmp_path)) == 0
    capsys.readouterr()
    code = main(["eval", str(tmp_path / "r"), "--checkpoint", "/dev/zero"])
    _one_error_line(capsys, code, "/dev/zero: not a regular file")
    code = main(["eval", str(tmp_path / "r"), "--checkpoint", str(tmp_path)])
    _one_error_line(capsys, code, "a directory, not a checkpoint file")


@covers(
    "interrupts",
    "Ctrl-C or SIGTERM while the data loads, before training starts",
    "mwnet: stopped (Ctrl-C) / (SIGTERM), exit 130 / 143, no traceback",
)
@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_interrupt_before_training(fmnist_root, tmp_path, capsys, monkeypatch, stop, code):
    def interrupted(*args, **kw):
        raise stop

    monkeypatch.setattr(loop, "build_experiment", interrupted)
    assert main(_train_argv(fmnist_root, tmp_path)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith("mwnet: stopped")
    assert not (tmp_path / "r").exists()


@covers(
    "interrupts",
    "SIGTERM during the first epoch of a new run",
    "'stopped by SIGTERM before the first epoch ended; nothing was saved', exit 143, "
    "the empty run directory removed",
)
def test_sigterm_in_the_first_epoch(fmnist_root, tmp_path, capsys, monkeypatch):
    def terminated(self):
        raise Terminated

    monkeypatch.setattr(loop.Trainer, "_train_epoch", terminated)
    assert main(_train_argv(fmnist_root, tmp_path)) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM before the first epoch ended; nothing was saved" in err
    assert not (tmp_path / "r").exists()


@covers(
    "bad input",
    "a bug inside mwnet (an unexpected exception)",
    "the traceback, then 'mwnet: internal error: this is a bug in mwnet ...; please "
    "report it', exit 1",
)
def test_a_bug_gets_a_traceback_and_a_request_to_report_it(capsys, monkeypatch):
    from mwnet.train import commands

    def broken(args):
        raise KeyError("some internal key")

    monkeypatch.setattr(commands, "run_presets", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'some internal key'" in err
    assert err.strip().splitlines()[-1].startswith("mwnet: internal error: this is a bug")
    assert "please report it" in err


@covers(
    "installation",
    "pip install mwnet without the train extra, then mwnet presets / mwnet train",
    "mwnet: error: `mwnet presets` needs omegaconf, which is not installed: pip install "
    "'mwnet[train]'",
)
@pytest.mark.parametrize("command", [["presets"], ["train", "--preset", PRESET]])
def test_missing_train_extra_names_the_extra(command):
    blocked = (
        "import sys\nfor m in ('omegaconf', 'tqdm', 'matplotlib', 'PIL'): sys.modules[m] = None\n"
    )
    code = f"{blocked}from mwnet.cli import main\nsys.exit(main({command!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mwnet: error: `mwnet ") and "Traceback" not in done.stderr
    assert "which is not installed: pip install 'mwnet[train]'" in done.stderr


@covers(
    "damaged files",
    "a damaged line in metrics.jsonl, then --resume or mwnet plot",
    "mwnet: error: RUN/metrics.jsonl:LINE: not a valid JSON line",
)
def test_damaged_metrics_line(fmnist_root, tmp_path, capsys):
    assert main(_train_argv(fmnist_root, tmp_path)) == 0
    metrics = tmp_path / "r" / "metrics.jsonl"
    metrics.write_text("garbage{\n" + metrics.read_text())
    capsys.readouterr()
    for argv in (["train", "--resume", str(tmp_path / "r")], ["plot", str(tmp_path / "r")]):
        _one_error_line(capsys, main(argv), "metrics.jsonl:1: not a valid JSON line")


@covers(
    "bad input",
    "mwnet suite --out naming a file",
    "mwnet: error: --out FILE is a file; give a directory",
)
def test_suite_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code = main(["suite", "--quick", "--out", str(tmp_path / "f")])
    _one_error_line(capsys, code, "is a file; give a directory for the suite's runs")
