"""``model.pt``: every finished run ships its model in one file that loads without the run
directory (only torch and mwnet, ``weights_only=True``) and predicts exactly what the
trained model predicts; a damaged, foreign or future file is one clear error line."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import covers
from rounding import sum_bound

import mwnet
from mwnet.data import FASHION_MNIST_CLASSES
from mwnet.predict.export import export_model
from mwnet.run.model_file import (
    MODEL_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    ModelFileError,
    save_model_file,
)
from mwnet.train import loop
from mwnet.train.config import load_config
from mwnet.train.evaluate import per_sample


def _fake_data():
    path = Path(__file__).resolve().parents[1] / "train" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-epoch run on fake Fashion-MNIST (its plots skipped: not about them),
    and its trainer, whose model is the one the run ended with."""
    fake = _fake_data()
    root = fake.write_idx(tmp_path_factory.mktemp("data") / "fmnist", per_class=20)
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "plot_run", lambda run_dir: [])
        trainer, run_dir = loop.start(
            load_config(None, fake.tiny_idx_overrides(root, out, "name=run")), quiet=True
        )
        trainer.fit()
    return trainer, run_dir


def _trained_logits(trainer, images: torch.Tensor) -> torch.Tensor:
    """The trained model's outputs through the training loop's own evaluation pass."""
    e = trainer.exp
    labels = torch.zeros(len(images), dtype=torch.long)
    return per_sample(e.model, images, labels, e.normalize, e.device, 500, lambda z, y: z).float()


def test_a_finished_run_writes_its_model_file(trained) -> None:
    trainer, run_dir = trained
    file = torch.load(run_dir / MODEL_FILE, weights_only=True)  # plain tensors and containers
    assert file["format"] == MODEL_FORMAT and file["version"] == MODEL_FORMAT_VERSION
    assert file["mwnet_version"] == mwnet.__version__
    assert file["model"] == {
        "name": "mlp",
        "options": {"hidden": [16], "image_size": 28},
        "num_classes": 10,
        "in_channels": 1,
    }
    assert file["classes"] == FASHION_MNIST_CLASSES
    spec = file["input"]
    assert (spec["channels"], spec["height"], spec["width"]) == (1, 28, 28)
    assert spec["color"] == "gray" and spec["resize"] == "none"  # IDX images are never resized
    # the normalisation is the very one the training batches applied...
    norm = trainer.exp.normalize
    assert spec["normalize"] == {"mean": list(norm.mean), "std": list(norm.std)}
    # ...and it is the training images' statistics: their mean, by numpy in float64, agrees
    # up to the rounding of two orders of one sum of n terms in [0, 1] (the bound / n)
    pixels = trainer.exp.data.train_images.numpy().astype(np.float64) / 255
    n = pixels.size
    assert (
        abs(spec["normalize"]["mean"][0] - pixels.mean())
        <= sum_bound(n, pixels.sum(), torch.float64) / n
    )
    assert file["training"]["epochs"] == 2 and file["training"]["method"] == "ce"
    last = loop.read_jsonl(run_dir / loop.METRICS)[-1]
    assert file["training"]["test_acc"] == last["test_acc"]
    state = trainer.exp.model.state_dict()
    assert file["state_dict"].keys() == state.keys()
    assert all(torch.equal(file["state_dict"][k], state[k]) for k in state)


def test_the_loaded_model_predicts_exactly_what_the_trained_model_did(trained) -> None:
    trainer, run_dir = trained
    images = trainer.exp.data.test_images
    expected = _trained_logits(trainer, images)
    for source in (run_dir, run_dir / MODEL_FILE):
        model = mwnet.load_model(source)
        assert not model.module.training
        assert torch.equal(model.logits(images), expected)
        assert torch.equal(model.predict_proba(images), torch.softmax(expected, 1))
        assert model.predict(images[:3]) == [
            FASHION_MNIST_CLASSES[i] for i in expected[:3].argmax(1)
        ]
    # planted bug: a model file that left out the normalisation (inputs only scaled to
    # [0, 1]) gives other outputs, so the equality above can fail
    model = mwnet.load_model(run_dir)
    bare = {**model.fields, "input": {**model.fields["input"], "normalize": None}}
    assert not torch.equal(type(model)(bare, run_dir).logits(images), expected)


def test_loading_leaves_the_global_random_state_alone(trained) -> None:
    _, run_dir = trained
    torch.manual_seed(5)
    mwnet.load_model(run_dir)  # building the architecture draws initial weights
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_preprocess_refuses_images_the_model_does_not_take(trained) -> None:
    _, run_dir = trained
    model = mwnet.load_model(run_dir)
    with pytest.raises(ValueError, match=r"uint8 images"):
        model.preprocess(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"1x28x28 greyscale"):
        model.preprocess(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    # convert(): RGB made grey by Pillow's rule, but never resized for an IDX model
    rgb = torch.full((1, 3, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(model.convert(rgb), torch.full((1, 1, 28, 28), 7, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"trained without resizing"):
        model.convert(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_a_run_without_a_model_file_is_loaded_from_its_checkpoint(trained, tmp_path) -> None:
    """Runs made before runs wrote model.pt: the checkpoint and config.yaml stand in."""
    trainer, run_dir = trained
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    (old / MODEL_FILE).unlink()
    images = trainer.exp.data.test_images
    expected = _trained_logits(trainer, images)
    for source in (old, old / loop.CHECKPOINT):
        model = mwnet.load_model(source)
        assert torch.equal(model.logits(images), expected)
        assert model.fields["input"] == mwnet.load_model(run_dir).fields["input"]
    model.save(old / MODEL_FILE)  # and it can be given one
    assert torch.equal(mwnet.load_model(old / MODEL_FILE).logits(images), expected)


def test_fresh_processes_load_the_file_with_torch_and_mwnet_and_the_export_with_torch(
    trained, tmp_path
) -> None:
    """One new interpreter: first the torch.export archive with mwnet unimportable, then
    the model file, copied alone elsewhere, with mwnet but none of the training extras."""
    trainer, run_dir = trained
    alone = tmp_path / "elsewhere" / "shipped.pt"
    alone.parent.mkdir()
    shutil.copy(run_dir / MODEL_FILE, alone)
    archive = export_model(mwnet.load_model(run_dir), tmp_path / "model.pt2")
    images = trainer.exp.data.test_images[:7]  # another batch size than the traced one
    torch.save(images, tmp_path / "images.pt")
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["mwnet"] = None  # importing mwnet fails: torch alone
        import torch
        images = torch.load({str(tmp_path / "images.pt")!r})
        extra = {{"mwnet.json": ""}}
        program = torch.export.load({str(archive)!r}, extra_files=extra)
        torch.save(program.module()(images), {str(tmp_path / "exported.pt")!r})
        print(json.loads(extra["mwnet.json"])["classes"][0])
        del sys.modules["mwnet"]
        for extra in ("omegaconf", "yaml", "matplotlib", "PIL"):  # the training extras
            sys.modules[extra] = None
        import mwnet
        model = mwnet.load_model({str(alone)!r})
        torch.save(model.predict_proba(images), {str(tmp_path / "loaded.pt")!r})
        print(model.classes[0])
        """
    )
    src = str(Path(mwnet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=alone.parent, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["T-shirt/top", "T-shirt/top"]
    expected = torch.softmax(_trained_logits(trainer, images), 1)
    for name in ("exported.pt", "loaded.pt"):
        assert torch.equal(torch.load(tmp_path / name, weights_only=True), expected), name


# -- errors ----------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@covers(
    "bad input",
    "mwnet.load_model (or mwnet predict) on a model file that does not exist, or a folder "
    "that holds no run",
    "'PATH: no such model file; check the path (a finished run's directory holds model.pt)'",
)
def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(tmp_path / "nothing.pt")
    assert "no such model file" in _one_line(err)
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(tmp_path)  # a folder that holds no run
    assert "no model.pt in it" in _one_line(err)


@covers(
    "damaged files",
    "a truncated model.pt (cut at half, or just before its end)",
    "'PATH: model file is truncated or corrupt (...); copy it again from its run directory "
    "(or delete it there: the run's checkpoint.pt and config.yaml then stand in for it)'",
)
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_file(trained, tmp_path, keep) -> None:
    data = (trained[1] / MODEL_FILE).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(cut)
    assert "model file is truncated or corrupt" in _one_line(err)


@covers(
    "damaged files",
    "one flipped byte in model.pt's weights",
    "'PATH: model file is truncated or corrupt (checksum mismatch in ...)', not other weights",
)
def test_flipped_byte_in_the_weights(trained, tmp_path) -> None:
    """A bit flipped in the weights fails the zip member's CRC instead of loading as
    other weights."""
    data = bytearray((trained[1] / MODEL_FILE).read_bytes())
    start = data.index(b"data/0") + 200  # inside the first tensor's bytes
    data[start] ^= 0xFF
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(bad)
    assert "truncated or corrupt" in _one_line(err)


@covers(
    "damaged files",
    "a bare state_dict, a text file, or a training checkpoint without its config.yaml given "
    "as the model",
    "'not an mwnet model file (... e.g. a bare state_dict)', 'truncated or corrupt', 'a "
    "training checkpoint, not a model file; pass the run directory that holds it'",
)
def test_file_of_another_format(trained, tmp_path) -> None:
    bare = tmp_path / "state_dict.pt"
    torch.save(trained[0].exp.model.state_dict(), bare)
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(bare)
    assert "not an mwnet model file" in _one_line(err)
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(text)
    assert "truncated or corrupt" in _one_line(err)
    lone = tmp_path / "checkpoint.pt"  # a checkpoint without its config.yaml
    shutil.copy(trained[1] / loop.CHECKPOINT, lone)
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(lone)
    assert "a training checkpoint, not a model file" in _one_line(err)


@covers(
    "damaged files",
    "a model file pickle that would run code (os.system)",
    "'PATH: refused to load: it contains objects that are not plain tensors/containers "
    "(possible tampering)'; nothing runs",
)
def test_pickled_code_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "payload": Payload()}, evil)
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(evil)
    assert "refused to load" in _one_line(err)


def _rewrite(trained, tmp_path, **changes) -> Path:
    file = torch.load(trained[1] / MODEL_FILE, weights_only=True)
    path = tmp_path / "changed.pt"
    torch.save({**file, **changes}, path)
    return path


@covers(
    "damaged files",
    "a model file of a newer layout version",
    "'PATH: model file layout version 2, written by mwnet 9.0, is newer than this mwnet "
    "reads (version 1); upgrade mwnet'",
)
def test_a_newer_layout_version_is_refused(trained, tmp_path) -> None:
    path = _rewrite(trained, tmp_path, version=MODEL_FORMAT_VERSION + 1, mwnet_version="9.0")
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(path)
    message = _one_line(err)
    assert f"version {MODEL_FORMAT_VERSION + 1}, written by mwnet 9.0" in message
    assert "upgrade mwnet" in message


@covers(
    "damaged files",
    "a model file whose weights do not fit its architecture (other widths, a tensor missing)",
    "'PATH: its weights do not fit model 'mlp' with options {...} (size mismatch for ...)'",
)
def test_weights_that_do_not_fit_the_architecture(trained, tmp_path) -> None:
    file = torch.load(trained[1] / MODEL_FILE, weights_only=True)
    model = {**file["model"], "options": {"hidden": [32], "image_size": 28}}  # 16 trained
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(_rewrite(trained, tmp_path, model=model))
    message = _one_line(err)
    assert "its weights do not fit model 'mlp'" in message and "size mismatch" in message
    state = dict(file["state_dict"])
    state.pop(next(iter(state)))
    with pytest.raises(ModelFileError) as err:
        mwnet.load_model(_rewrite(trained, tmp_path, state_dict=state))
    assert "Missing key(s)" in _one_line(err)


@covers(
    "damaged files",
    "a model file with a field missing or fields that disagree (9 class names for 10 outputs)",
    "'PATH: damaged model file (9 class names for 10 outputs); copy it again ...'",
)
def test_fields_missing_or_inconsistent(trained, tmp_path) -> None:
    file = torch.load(trained[1] / MODEL_FILE, weights_only=True)
    cases = {
        "field classes is missing": {k: v for k, v in file.items() if k != "classes"},
        "9 class names for 10 outputs": {**file, "classes": file["classes"][:9]},
        "input of 3 channel(s)": {**file, "input": {**file["input"], "channels": 3}},
        "field model.name is a int": {**file, "model": {**file["model"], "name": 3}},
    }
    for expected, changed in cases.items():
        path = tmp_path / "changed.pt"
        torch.save(changed, path)
        with pytest.raises(ModelFileError) as err:
            mwnet.load_model(path)
        assert f"damaged model file ({expected}" in _one_line(err)


def test_only_plain_values_are_written(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"training\.seen is a set"):
        save_model_file(tmp_path / "m.pt", {"training": {"seen": {1, 2}}})
    assert not (tmp_path / "m.pt").exists()


def test_the_cli_shows_a_bad_model_file_as_one_line(tmp_path, capsys) -> None:
    from mwnet.cli import main

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 broken")
    assert main(["predict", str(bad), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mwnet: error: ") and "\n" not in err
    assert "model file is truncated or corrupt" in err
