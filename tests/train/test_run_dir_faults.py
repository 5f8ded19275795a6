"""One writer per run directory, a resumed run is the run that was started, and nothing
stale or half-written survives a kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fake_data import write_idx
from reliability import covers
from test_loop import tiny_overrides

from mwnet.run import CheckpointError, RunDirBusy, RunDirError, load_checkpoint, read_json
from mwnet.run.checkpoint import save_checkpoint
from mwnet.run.lock import RunLock
from mwnet.train import loop
from mwnet.train.config import ConfigError, load_config
from mwnet.train.loop import summary_finished as finished

PRESET = "fmnist-flip2-40"


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory) -> Path:
    return write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=30)


def _config(root: Path, out: Path, name: str | None, *extra: str, method: str = "ce"):
    overrides = tiny_overrides(root, out, name or "-", method)
    if name is None:
        overrides = [o for o in overrides if not o.startswith("name=")]
    return load_config(PRESET, [*overrides, "optim.epochs=2", *extra])


def _edit_config(run_dir: Path, old: str, new: str) -> None:
    path = run_dir / loop.CONFIG
    text = path.read_text()
    assert old in text, f"{old!r} not in config.yaml"
    path.write_text(text.replace(old, new, 1))


# --- one writer per run directory ------------------------------------------------------


@covers(
    "mixed runs",
    "a second trainer resumes a run directory another one holds (in one program or two)",
    "RunDirBusy: '<run> is in use by mwnet pid N on HOST since TIME' before any data is read",
)
def test_a_held_run_directory_is_refused(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "held"), quiet=True)
    with pytest.raises(RunDirBusy, match=rf"is in use by mwnet pid {os.getpid()} on "):
        loop.resume(run_dir, quiet=True)
    with pytest.raises(RunDirBusy, match="is in use"):
        loop.start(_config(fmnist_root, tmp_path, "held"), quiet=True)
    trainer.fit(stop_after=1)  # the holder trains on, and lets go when fit returns
    assert [r["epoch"] for r in loop.read_jsonl(run_dir / "metrics.jsonl")] == [1]
    resumed = loop.resume(run_dir, quiet=True)
    with pytest.raises(RunDirBusy):
        trainer.fit()  # the first trainer cannot take it back while the second holds it
    resumed.fit()
    assert [r["epoch"] for r in loop.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


@covers(
    "mixed runs",
    "two auto-named runs with different configs started at the same time",
    "each gets its own directory (<stem>, <stem>-2), each holding its own config",
)
def test_auto_named_runs_started_together_get_their_own_directories(
    fmnist_root, tmp_path, monkeypatch
):
    a = _config(fmnist_root, tmp_path, None, "seed=0")
    b = _config(fmnist_root, tmp_path, None, "seed=0", "optim.lr=0.05")
    build, started = loop.build_experiment, {}

    def build_while_the_other_starts(cfg, *args, **kw):
        if not started:  # the first run is loading its data when the second one starts
            started["b"] = None
            started["b"] = loop.start(b, quiet=True)
        return build(cfg, *args, **kw)

    monkeypatch.setattr(loop, "build_experiment", build_while_the_other_starts)
    trainer_a, dir_a = loop.start(a, quiet=True)
    trainer_b, dir_b = started["b"]
    assert dir_a != dir_b and {dir_a.name, dir_b.name} == {
        f"{PRESET}-ce-seed0",
        f"{PRESET}-ce-seed0-2",
    }
    lr_a, lr_b = loop.run_config(dir_a).optim.lr, loop.run_config(dir_b).optim.lr
    assert lr_a == a.optim.lr != b.optim.lr == lr_b
    trainer_a.close()
    trainer_b.close()


@covers(
    "bad input",
    "out_dir is a file (found before any data is loaded)",
    "RunDirError: cannot use OUT/NAME as a run directory (OUT is a file)",
)
def test_out_dir_that_is_a_file(fmnist_root, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")

    def no_data(*args, **kw):
        raise AssertionError("data was loaded before the run directory was checked")

    monkeypatch.setattr(loop, "build_experiment", no_data)
    with pytest.raises(RunDirError, match=r"afile/r as a run directory \(.*afile is a file\)"):
        loop.start(_config(fmnist_root, tmp_path / "afile", "r"), quiet=True)


@covers(
    "bad input",
    "out_dir not writable (read-only, or a system directory)",
    "RunDirError: cannot use ... as a run directory (Permission denied / not permitted)",
)
def test_unwritable_out_dir(fmnist_root, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere permissions allow nothing; /sys it cannot
        out = Path("/sys/mwnet-test-runs")
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    with pytest.raises(RunDirError, match="as a run directory"):
        loop.start(_config(fmnist_root, out, "r"), quiet=True)


@covers(
    "stale results",
    "a run that fails before its first epoch is saved (e.g. a bad model, a diverging lr)",
    "its new run directory is removed: no directory holding only config.yaml is left",
)
def test_failed_start_leaves_no_directory(fmnist_root, tmp_path):
    cfg = _config(fmnist_root, tmp_path, "bad", "model.name=mlp", "model.options.image_size=32")
    with pytest.raises(ConfigError, match="cannot take this data's 1x28x28 images"):
        loop.start(cfg, quiet=True)
    assert not (tmp_path / "bad").exists()
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "nan", "optim.lr=1e30"))
    with pytest.raises(FloatingPointError, match=r"non-finite .*\[in epoch 1: nothing was saved\]"):
        trainer.fit()
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []


# --- the resumed run is the run that was started ---------------------------------------


@covers(
    "mixed runs",
    "config.yaml edited before --resume: seed, noise rate, method, lr ...",
    "ConfigError naming every changed key with old -> new values; nothing is trained",
)
@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("seed: 0", "seed: 1", "seed (0 -> 1)"),
        ("noise_rate: 0.4", "noise_rate: 0.2", "data.noise_rate (0.4 -> 0.2)"),
        ("name: ce\n", "name: focal\n", "method.name ('ce' -> 'focal')"),
        ("lr: 0.01", "lr: 0.05", "optim.lr (0.01 -> 0.05)"),
    ],
)
def test_resume_refuses_an_edited_config(fmnist_root, tmp_path, old, new, key):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "edited"), quiet=True)
    trainer.fit(stop_after=1)
    before = load_checkpoint(run_dir / loop.CHECKPOINT)
    _edit_config(run_dir, old, new)
    with pytest.raises(ConfigError, match="differs from the config the run was trained with") as e:
        loop.resume(run_dir, quiet=True)
    assert key in str(e.value) and "\n" not in str(e.value)
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["epoch"] == before["epoch"]
    assert not RunLock(run_dir).acquire().release()  # the refused resume let go of the lock


@covers(
    "mixed runs",
    "--allow-change optim.epochs after editing optim.epochs (train longer)",
    "the run continues to the new epoch count; other keys stay refused",
)
def test_allowed_change_of_epochs_trains_longer(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "longer"), quiet=True)
    trainer.fit()
    _edit_config(run_dir, "epochs: 2", "epochs: 3")
    with pytest.raises(ConfigError, match=r"add --allow-change optim\.epochs"):
        loop.resume(run_dir, quiet=True)
    with pytest.raises(ConfigError, match="--allow-change seed: only these keys may change"):
        loop.resume(run_dir, quiet=True, allow_change=("optim.epochs", "seed"))
    resumed = loop.resume(run_dir, quiet=True, allow_change=("optim.epochs",))
    summary = resumed.fit()
    assert summary["epochs_done"] == 3 and summary["finished"]
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["config"]["optim"]["epochs"] == 3
    _edit_config(run_dir, "epochs: 3", "epochs: 1")
    with pytest.raises(ConfigError, match=r"optim\.epochs=1 is below the 3 epoch"):
        loop.resume(run_dir, quiet=True, allow_change=("optim.epochs",))


@covers(
    "wrong data",
    "resume with data.root moved to a copy holding other data",
    "CheckpointError: the run was trained on other data than data.* loads now",
)
def test_resume_on_other_data_is_refused(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "moved"), quiet=True)
    trainer.fit(stop_after=1)
    other = write_idx(tmp_path / "other", per_class=30, seed=1)
    _edit_config(run_dir, f"root: {fmnist_root}", f"root: {other}")
    with pytest.raises(CheckpointError, match="trained on other data than data"):
        loop.resume(run_dir, quiet=True, allow_change=("data.root",))
    same = tmp_path / "same"
    same.mkdir()
    for f in fmnist_root.iterdir():
        (same / f.name).write_bytes(f.read_bytes())
    _edit_config(run_dir, f"root: {other}", f"root: {same}")
    loop.resume(run_dir, quiet=True, allow_change=("data.root",)).fit()


@covers(
    "damaged files",
    "a checkpoint of another model in the run directory (or one without a saved config)",
    "one-line ConfigError naming model.name, or CheckpointError: does not fit the run",
)
def test_checkpoint_of_another_model(fmnist_root, tmp_path):
    cnn, cnn_dir = loop.start(_config(fmnist_root, tmp_path, "cnn"), quiet=True)
    cnn.fit(stop_after=1)
    mlp, mlp_dir = loop.start(_config(fmnist_root, tmp_path, "mlp", "model.name=mlp"), True)
    mlp.fit(stop_after=1)
    foreign = load_checkpoint(cnn_dir / loop.CHECKPOINT)
    save_checkpoint(mlp_dir / loop.CHECKPOINT, foreign)
    with pytest.raises(ConfigError, match=r"model.name \('cnn_small' -> 'mlp'\)"):
        loop.resume(mlp_dir, quiet=True)
    del foreign["config"], foreign["data_crc"]  # as written by an older mwnet
    save_checkpoint(mlp_dir / loop.CHECKPOINT, foreign)
    with pytest.raises(CheckpointError, match="does not fit the run in") as err:
        loop.resume(mlp_dir, quiet=True)
    assert "\n" not in str(err.value)


@covers(
    "damaged files",
    "a checkpoint with valid framing but damaged contents (a part missing, wrong types)",
    "CheckpointError: does not fit the run ... damaged, or no epoch count",
)
def test_checkpoint_with_damaged_contents(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "dmg"), quiet=True)
    trainer.fit(stop_after=1)
    state = load_checkpoint(run_dir / loop.CHECKPOINT)
    for damage, message in (
        (lambda s: s.pop("optimizer"), "does not fit the run"),
        (lambda s: s.__setitem__("model", [1, 2]), "does not fit the run"),
        (lambda s: s.__setitem__("epoch", "x"), "no epoch count"),
    ):
        broken = dict(state)
        damage(broken)
        save_checkpoint(run_dir / loop.CHECKPOINT, broken)
        with pytest.raises(CheckpointError, match=message):
            loop.resume(run_dir, quiet=True)


@covers(
    "damaged files",
    "config.yaml damaged on resume (not YAML, not a mapping, or emptied)",
    "ConfigError naming the file and the line; an emptied one is refused as an edit",
)
def test_broken_config_yaml_on_resume(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "yaml"), quiet=True)
    trainer.fit(stop_after=1)
    config = run_dir / loop.CONFIG
    config.write_text("seed: 0\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.yaml is not valid YAML \(line 3\)"):
        loop.resume(run_dir, quiet=True)
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="holds a YAML ListConfig, not a config mapping"):
        loop.resume(run_dir, quiet=True)
    config.write_text("")
    with pytest.raises(ConfigError, match="differs from the config the run was trained with"):
        loop.resume(run_dir, quiet=True)


# --- nothing stale survives a kill ------------------------------------------------------


@covers(
    "stale results",
    "a run killed after its last checkpoint but before summary.json",
    "the resume finishes it and rewrites summary.json (all epochs, finished: true)",
)
def test_kill_between_last_checkpoint_and_summary(fmnist_root, tmp_path, monkeypatch):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "late"), quiet=True)
    trainer.fit(stop_after=1)
    write_json = loop.write_json

    def killed_at_the_summary(path, obj):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt  # as if the process died right here
        write_json(path, obj)

    monkeypatch.setattr(loop, "write_json", killed_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["epoch"] == 2
    stale = read_json(run_dir / "summary.json")
    assert stale["epochs_done"] == 1 and not finished(stale)
    loop.resume(run_dir, quiet=True).fit()
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_done"] == 2 and finished(summary)
    last = loop.read_jsonl(run_dir / "metrics.jsonl")[-1]["test_acc"]
    assert summary["last_test_acc"] == round(last, 2)


@covers(
    "stale results",
    "a run killed while writing its final plots (all epochs done)",
    "summary.json says finished: false until the last plot is written; the suite resumes it",
)
def test_summary_is_finished_only_after_the_last_artifact(fmnist_root, tmp_path, monkeypatch):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "plots"), quiet=True)

    def killed_in_the_plots(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "plot_run", killed_in_the_plots)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_done"] == summary["epochs_total"] == 2 and not finished(summary)
    monkeypatch.undo()
    loop.resume(run_dir, quiet=True).fit()
    assert finished(read_json(run_dir / "summary.json"))
    assert (run_dir / "accuracy.png").is_file()


@covers(
    "interrupts",
    "a stale .checkpoint.pt.<pid>.<hex>.tmp from a process killed mid-save",
    "removed when the run is resumed",
)
def test_resume_removes_stale_temporaries(fmnist_root, tmp_path):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "tmp"), quiet=True)
    trainer.fit(stop_after=1)
    stale = run_dir / ".checkpoint.pt.999999.0123abcd.tmp"
    stale.write_bytes(b"\0" * 1000)
    trainer = loop.resume(run_dir, quiet=True)
    assert not stale.exists()
    trainer.close()


@covers(
    "state damage",
    "the disk fills up (or the directory goes away) while an epoch is saved",
    "RunDirError: cannot save epoch N in RUN (No space left on device); the previous "
    "checkpoint is intact and resumable",
)
def test_full_disk_during_save(fmnist_root, tmp_path, monkeypatch):
    trainer, run_dir = loop.start(_config(fmnist_root, tmp_path, "full"), quiet=True)
    trainer.fit(stop_after=1)
    import mwnet.run.checkpoint as checkpoint_module

    def full(obj, f):
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(RunDirError, match=r"cannot save epoch 2 .*No space left on device"):
        trainer.fit()
    monkeypatch.undo()
    assert load_checkpoint(run_dir / loop.CHECKPOINT)["epoch"] == 1
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert loop.resume(run_dir, quiet=True).fit()["epochs_done"] == 2
    assert torch.isfinite(torch.tensor(read_json(run_dir / "summary.json")["last_test_acc"]))
