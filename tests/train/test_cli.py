"""The command line: help, errors as one line, and a killed training that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_data import write_idx
from test_loop import tiny_overrides

from mwnet.cli import main
from mwnet.run import read_json, read_jsonl
from mwnet.train.config import preset_names


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["presets", "--help"],
        ["eval", "--help"],
        ["plot", "--help"],
        ["bench", "--help"],
    ],
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: mwnet" in capsys.readouterr().out


def test_presets_lists_one_line_each(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(preset_names()) > 37
    assert [line.split()[0] for line in lines] == preset_names()
    assert any(line.startswith("fmnist-flip2-40 ") for line in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--preset", "fmnist-flip2-40", "optim.epoch=3"],
            r"unknown config key 'optim.epoch' \(did you mean 'optim.epochs'\?\)",
        ),
        (
            ["train", "--preset", "fmnist-flip2-40", "data.noise_rate=1.5"],
            r"data.noise_rate must lie in \[0, 1\]",
        ),
        (["train", "--preset", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["train", "--preset", "fmnist-flip-40"], r"did you mean 'fmnist-flip2-40'\?"),
        (["train", "--preset", "fmnist-flip2-40", "lr=0.1"], r"did you mean 'optim.lr'\?"),
        (
            ["train", "--preset", "fmnist-flip2-40", "method.name=mwnt"],
            r"method.name='mwnt' is not valid \(did you mean 'mwnet'\?\)",
        ),
        (["train", "--preset", "fmnist-flip2-40", "zzz=1"], "valid keys: description, name"),
        (
            ["train", "--preset", "fmnist-flip2-40", "method.name=magic"],
            "method.name='magic' is not valid; choose one of ce, focal",
        ),
        (
            ["train", "--preset", "fmnist-flip2-40", "data.dataset=mnist", "data.download=false"],
            r"MNIST \(train split\) not found",
        ),
        (["eval", "nowhere"], "nowhere is not a run directory"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwnet: error: ")
    import re

    assert re.search(message, err), err


def test_train_eval_plot_and_corrupt_checkpoint(fmnist_root, tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "fmnist-flip2-40",
        "--quiet",
        "--recipe",
        "cheap",
        *tiny_overrides(fmnist_root, tmp_path, "cli"),
        "optim.epochs=1",
    ]
    assert main(args) == 0
    assert "hypergrad: head" in (tmp_path / "cli" / "config.yaml").read_text()
    out, err = capsys.readouterr()
    summary = read_json(tmp_path / "cli" / "summary.json")
    assert summary["epochs_done"] == 1
    assert out == f"mwnet: 1 epoch, test accuracy {summary['last_test_acc']:.2f}%, " + (
        f"{summary['wall_time']:.1f} s\n"
    )
    assert "summary: " in err and "plots:" in err and "  noise_rate: 0.4" not in err
    assert "training mwnet on fashion-mnist (200 images, flip2 noise 40 %, 50 trusted)" in err
    run_dir = tmp_path / "cli"
    assert main(["eval", str(run_dir)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["test_acc"] == round(read_jsonl(run_dir / "metrics.jsonl")[-1]["test_acc"], 2)
    assert main(["plot", str(run_dir)]) == 0
    assert "accuracy.png" in capsys.readouterr().out
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwnet: error: ") and "checkpoint.pt" in err and err.count("\n") == 1


def test_training_killed_mid_epoch_resumes_and_finishes(fmnist_root, tmp_path):
    """SIGKILL during epoch 2 loses only that epoch; --resume finishes the run."""
    run_dir = tmp_path / "killed"
    overrides = tiny_overrides(fmnist_root, tmp_path, "killed", "mwnet")
    overrides = [o for o in overrides if not o.startswith(("data.subset", "optim.epochs"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mwnet",
        "train",
        "--preset",
        "fmnist-flip2-40",
        "--quiet",
        *overrides,
        "data.batch_size=10",
        "optim.epochs=3",
        "threads=1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and read_jsonl(metrics)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(read_jsonl(metrics))
    assert 1 <= done < 3, "the run ended before it could be killed mid-way"
    resume = [sys.executable, "-m", "mwnet", "train", "--resume", str(run_dir), "--quiet"]
    finished = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"after epoch {done}" in finished.stderr
    assert [r["epoch"] for r in read_jsonl(metrics)] == [1, 2, 3]
    assert read_json(run_dir / "summary.json")["epochs_done"] == 3
    assert finished.stdout.startswith("mwnet: 3 epochs, test accuracy ")


def test_a_recipe_is_overrides_that_the_command_line_overrides():
    from mwnet.train.config import load_config
    from mwnet.train.recipes import RECIPES, recipe_overrides

    cheap = load_config("fmnist-flip2-40", recipe_overrides("cheap", []))
    assert cheap.method.mwnet.hypergrad == "head"
    mine = load_config(
        "fmnist-flip2-40", recipe_overrides("cheap", ["method.mwnet.hypergrad=fast"])
    )
    assert mine.method.mwnet.hypergrad == "fast"
    exact = load_config("fmnist-flip2-40", recipe_overrides("exact", []))
    assert exact.method.mwnet.hypergrad == "fast"
    # a recipe's keys apply like a preset's: to the methods that read them
    ce = load_config("fmnist-flip2-40", ["method.name=ce"], defaults=RECIPES["cheap"])
    assert "mwnet" not in ce.method
    with pytest.raises(ValueError, match="unknown recipe 'fastest'; choose from exact, cheap"):
        recipe_overrides("fastest", [])
