"""``model.pt``: a trained model in one file that needs nothing else to be used.

A run's checkpoint only makes sense beside its ``config.yaml`` and its data (the
normalisation is the training set's statistics, the input size the dataset's): to use
the model elsewhere you would need the whole run directory and the dataset. The model
file holds everything a prediction needs: the weights, the architecture to rebuild them
into, the class names, and how an image becomes the model's input (its size and
channels, whether files are resized, the normalisation).

The file is ``torch.save`` of one dict of tensors, strings, numbers, lists and dicts
only, so it loads with ``torch.load(weights_only=True)``: no pickled code runs. It is
written atomically and read with the same checks and one-line errors as a checkpoint
(:func:`~mwnet.run.checkpoint.read_torch_file`). Its fields (``docs/RUN_DIRECTORY.md``
lists them):

- ``format`` (``"mwnet-model"``), ``version`` (of this layout), ``mwnet_version``;
- ``model``: ``name``, ``options``, ``num_classes``, ``in_channels``, what
  ``mwnet.models.build`` rebuilds the architecture from;
- ``state_dict``: the weights (and BatchNorm statistics);
- ``classes``: the class names, in output order;
- ``input``: ``channels``, ``height``, ``width``, ``color`` (``gray`` or ``rgb``),
  ``resize`` (``cover-crop``: files are scaled to cover the size and centre-cropped, as
  ``data.dataset=folder`` reads them; ``none``: images must have the size) and
  ``normalize`` (``{"mean": [...], "std": [...]}`` per channel, in ``[0, 1]`` units, or
  None). A model trained on a table (``data.dataset=table``) has ``color`` ``features``:
  one channel per feature, of 1x1 pixel, normalised in the features' own units, and a
  ``table`` entry saying how a table file becomes its input (``feature_names``, and the
  ``label_column``, ``feature_columns``, ``embedding_column`` and ``id_column`` it was
  read with);
- ``training``: what it came from (``dataset``, ``method``, ``seed``, ``epochs``,
  ``test_acc``), for people.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mwnet.run.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    FileKind,
    write_torch_file,
)

MODEL_FILE = "model.pt"
MODEL_FORMAT = "mwnet-model"
MODEL_FORMAT_VERSION = 1

RESIZE_MODES = ("cover-crop", "none")
COLORS = {1: "gray", 3: "rgb"}
FEATURES = "features"
"""The ``color`` of a model trained on table rows: any number of channels, 1x1 pixel."""


class ModelFileError(CheckpointError):
    """A model file could not be read or does not make a model; one line naming the file,
    the cause and the fix."""


MODEL_FILE_KIND = FileKind(
    noun="model file",
    missing="check the path (a finished run's directory holds model.pt)",
    point="point at a model.pt or at a run directory",
    trusted="only load model files from a source you trust",
    damaged="copy it again from its run directory (or delete it there: the run's "
    "checkpoint.pt and config.yaml then stand in for it)",
    error=ModelFileError,
)


def save_model_file(path: str | os.PathLike[str], fields: dict[str, Any]) -> None:
    """Write the model file ``fields`` (every field of the module docstring but
    ``format`` and ``version``, which are added) to ``path`` atomically.

    Raises:
        TypeError: a value that ``torch.load(weights_only=True)`` would refuse (anything
            but tensors, str, int, float, bool, None, lists, tuples and str-keyed dicts).
        OSError: the file could not be written (a full disk), naming ``path``.
    """
    file = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, **fields}
    _check_plain(file, "")
    write_torch_file(path, file)


def _check_plain(value: Any, where: str) -> None:
    """Refuse, before writing, what a ``weights_only`` load would refuse after."""
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"model file field {where or '.'} has a key {key!r}, not a str")
            _check_plain(item, f"{where}.{key}" if where else key)
        return
    raise TypeError(
        f"model file field {where} is a {type(value).__name__}; only tensors, str, int, "
        "float, bool, None, lists and dicts load with weights_only=True"
    )


def check_format(file: object, path: Path) -> None:
    """``file`` (what ``torch.load`` read from ``path``) is a model file this mwnet reads."""
    marker = file.get("format") if isinstance(file, dict) else None
    if marker == CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path}: a training checkpoint, not a model file; pass the run directory that "
            "holds it (its config.yaml tells how to rebuild the model)"
        )
    if marker != MODEL_FORMAT:
        what = "a dict without" if isinstance(file, dict) else f"a {type(file).__name__}, not"
        raise ModelFileError(
            f"{path}: not an mwnet model file (a valid torch file, but {what} the "
            f"{MODEL_FORMAT!r} marker, e.g. a bare state_dict); point at the model.pt of a run"
        )
    version = file.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _damaged(path, f"its version is {version!r}, not a number")
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file layout version {version}, written by mwnet "
            f"{file.get('mwnet_version', '?')}, is newer than this mwnet reads (version "
            f"{MODEL_FORMAT_VERSION}); upgrade mwnet (pip install -U mwnet)"
        )
    if version < 1:
        raise _damaged(path, f"its version is {version}")


_FIELDS: dict[str, tuple[type, ...]] = {
    "mwnet_version": (str,),
    "model": (dict,),
    "state_dict": (dict,),
    "classes": (list,),
    "input": (dict,),
    "training": (dict,),
}
_MODEL_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "options": (dict,),
    "num_classes": (int,),
    "in_channels": (int,),
}
_INPUT_FIELDS: dict[str, tuple[type, ...]] = {
    "channels": (int,),
    "height": (int,),
    "width": (int,),
    "color": (str,),
    "resize": (str,),
    "normalize": (dict, type(None)),
}


def check_fields(file: dict[str, Any], path: Path) -> None:
    """Every field is there, of its type, and the fields agree with each other."""
    for group, fields, where in (
        (file, _FIELDS, ""),
        (file.get("model"), _MODEL_FIELDS, "model."),
        (file.get("input"), _INPUT_FIELDS, "input."),
    ):
        for key, types in fields.items():
            value = group.get(key, ...)
            if value is ... or not isinstance(value, types) or isinstance(value, bool):
                got = "missing" if value is ... else f"a {type(value).__name__}"
                raise _damaged(path, f"field {where}{key} is {got}")
    model, spec, classes = file["model"], file["input"], file["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        raise _damaged(path, "its classes are not a list of names")
    if model["num_classes"] != len(classes):
        raise _damaged(path, f"{len(classes)} class names for {model['num_classes']} outputs")
    color = FEATURES if spec.get("table") is not None else COLORS.get(spec["channels"])
    if spec["channels"] != model["in_channels"] or color != spec["color"]:
        raise _damaged(
            path,
            f"input of {spec['channels']} channel(s), {spec['color']!r}, for a model of "
            f"{model['in_channels']} input channel(s)",
        )
    if spec["height"] < 1 or spec["width"] < 1 or spec["resize"] not in RESIZE_MODES:
        raise _damaged(path, f"input size {spec['height']}x{spec['width']}, {spec['resize']!r}")
    norm = spec["normalize"]
    if norm is not None:
        mean, std = norm.get("mean"), norm.get("std")
        if not all(
            isinstance(v, list) and len(v) == spec["channels"] and all(_number(x) for x in v)
            for v in (mean, std)
        ) or not all(s > 0 for s in std):
            raise _damaged(path, f"input.normalize is {norm!r}")
    bad = [k for k, v in file["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _damaged(path, f"state_dict entry {bad[0]!r} is not a tensor")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _damaged(path: Path, cause: str) -> ModelFileError:
    return ModelFileError(f"{path}: damaged model file ({cause}); {MODEL_FILE_KIND.damaged}")
