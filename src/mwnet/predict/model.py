"""A trained model loaded for use: :func:`load_model` and :class:`LoadedModel`.

The model comes from a model file (``model.pt``, :mod:`mwnet.run.model_file`), which
needs only torch and mwnet, or, for a run made before runs wrote one, from the run's
``checkpoint.pt`` and ``config.yaml`` (that path needs the training extras and the run's
data, to recover the normalisation the run computed from its training images).

Images reach the model exactly as training fed them: files are read by the data
package's own reader (:func:`mwnet.data.image_folder.read_image`: upright, 8-bit RGB,
resized and centre-cropped only where training did so, greyscale by Pillow's rule for
greyscale models), and the ``uint8`` pixels become the model's input by the same
:func:`mwnet.data.to_float` the training batches went through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwnet import models
from mwnet.data import Normalize, is_features, to_float
from mwnet.data.image_folder import cover_crop, grey8, read_image
from mwnet.run.checkpoint import CHECKPOINT_FORMAT, read_torch_file
from mwnet.run.model_file import (
    COLORS,
    FEATURES,
    MODEL_FILE,
    MODEL_FILE_KIND,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    ModelFileError,
    check_fields,
    check_format,
    save_model_file,
)

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: ``uint8`` images of ``channels`` x ``height`` x ``width``,
    normalised by ``normalize`` (None: only scaled to ``[0, 1]``); image files are
    resized to the size (scaled to cover, centre-cropped) when ``resize``, else refused
    unless they have it."""

    channels: int
    height: int
    width: int
    resize: bool
    normalize: Normalize | None
    table: dict[str, Any] | None = None
    """For a model trained on a table: its rows' features (``float32`` ``(N, D, 1, 1)``,
    ``D`` = ``channels``) replace the images, and this is how a table file is read
    (the model file's ``input.table``)."""

    @classmethod
    def from_fields(cls, spec: dict[str, Any]) -> InputSpec:
        norm = spec["normalize"]
        return cls(
            channels=int(spec["channels"]),
            height=int(spec["height"]),
            width=int(spec["width"]),
            resize=spec["resize"] == "cover-crop",
            normalize=None if norm is None else Normalize(norm["mean"], norm["std"]),
            table=spec.get("table"),
        )

    @property
    def color(self) -> str:
        """``gray``, ``rgb`` or ``features``."""
        return FEATURES if self.table is not None else COLORS[self.channels]

    def describe(self) -> str:
        """``1x28x28 greyscale images, used at that size, normalised``: for messages."""
        if self.table is not None:
            norm = "standardised" if self.normalize is not None else "used as they are"
            return f"table rows of {self.channels} features, {norm}"
        kind = "greyscale" if self.channels == 1 else "RGB"
        how = "files resized and centre-cropped to it" if self.resize else "used at that size"
        norm = "normalised" if self.normalize is not None else "scaled to [0, 1]"
        return f"{self.channels}x{self.height}x{self.width} {kind} images, {how}, {norm}"


class LoadedModel:
    """A trained classifier with what it needs to be applied to new images.

    Attributes:
        module: the network, in eval mode.
        classes: the class names, in the order of the outputs.
        input: the images it takes (:class:`InputSpec`).
        fields: every field of its model file (architecture, training record, version).
        path: where it was loaded from.
    """

    def __init__(self, fields: dict[str, Any], path: Path, device: str | torch.device = "cpu"):
        self.fields = fields
        self.path = path
        self.classes: list[str] = list(fields["classes"])
        self.input = InputSpec.from_fields(fields["input"])
        self.module = _rebuild(fields, path).to(device).eval()

    @property
    def device(self) -> torch.device:
        first = next(iter(self.module.parameters()), None)
        return torch.device("cpu") if first is None else first.device

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the network to ``device``; returns ``self``."""
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        m = self.fields["model"]
        return (
            f"LoadedModel({m['name']}, {len(self.classes)} classes, {self.input.describe()}, "
            f"from {self.path})"
        )

    # -- images ----------------------------------------------------------------------
    def read_image(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """The image file at ``path`` as the model takes it: ``uint8`` ``(C, H, W)``.

        Raises:
            DatasetError: one line naming the file, for a file that cannot be decoded, an
                image over Pillow's decompression-bomb limit, pixels without a meaning as
                intensities, or (a model that was not trained on resized files) an image
                of another size.
        """
        spec = self.input
        size = (spec.height, spec.width)
        return read_image(Path(path), size, spec.channels, spec.resize)

    def read_images(self, paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
        """:meth:`read_image` of each path, stacked: ``uint8`` ``(N, C, H, W)``."""
        if not paths:
            spec = self.input
            return torch.empty((0, spec.channels, spec.height, spec.width), dtype=torch.uint8)
        return torch.stack([self.read_image(p) for p in paths])

    def convert(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images ``(N, C, H, W)`` of another dataset's kind as the model takes
        them: greyscale made RGB (repeated) or RGB made greyscale (Pillow's rule), and
        resized like image files where the model was trained on resized files. Images
        that already fit are returned as they are.

        Raises:
            ValueError: images of another size for a model that was not trained on
                resized files, or of a channel count other than 1 or 3.
        """
        spec = self.input
        if spec.table is not None:
            return self._check_rows(images)
        _check_uint8(images)
        n, c, h, w = images.shape
        if (c, h, w) == (spec.channels, spec.height, spec.width):
            return images
        if c not in (1, 3):
            raise ValueError(f"images of {c} channels; the model takes {spec.describe()}")
        if (h, w) != (spec.height, spec.width):
            if not spec.resize:
                raise ValueError(
                    f"images of {w}x{h} pixels, but the model takes {spec.describe()} (it was "
                    "trained without resizing); resize them first"
                )
            images = _resize(images, spec.height, spec.width)
        elif c == 1:
            images = images.expand(n, 3, h, w).contiguous()  # Pillow's L -> RGB
        return images if spec.channels == 3 else grey8(images)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8`` images ``(N, C, H, W)`` as the model's float input, on its device:
        scaled to ``[0, 1]`` and normalised exactly as the training batches were.

        Raises:
            ValueError: not ``uint8`` ``(N, C, H, W)`` of the model's channels and size
                (:meth:`convert` makes other images fit; :meth:`read_image` reads files).
        """
        spec = self.input
        if spec.table is not None:
            return to_float(self._check_rows(images).to(self.device), spec.normalize)
        _check_uint8(images)
        if tuple(images.shape[1:]) != (spec.channels, spec.height, spec.width):
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])}, but the model takes "
                f"{spec.describe()}: read files with read_image(), or make other images fit "
                "with convert()"
            )
        return to_float(images.to(self.device), spec.normalize)

    def _check_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Table rows as the model takes them: ``float32`` ``(N, D, 1, 1)`` of its ``D``."""
        d = self.input.channels
        if not is_features(rows) or rows.shape[1] != d:
            got = f"{rows.dtype} {tuple(rows.shape)}" if isinstance(rows, torch.Tensor) else rows
            raise ValueError(
                f"expected table rows as float32 (N, {d}, 1, 1) (the model takes "
                f"{self.input.describe()}), got {got}"
            )
        return rows

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's outputs for ``uint8`` images ``(N, C, H, W)``, on the CPU."""
        return self.module(self.preprocess(images)).float().cpu()

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax of the outputs) for ``uint8`` images
        ``(N, C, H, W)``: float32 ``(N, len(classes))`` on the CPU."""
        return torch.softmax(self.logits(images), dim=1)

    def predict(self, images: torch.Tensor) -> list[str]:
        """The most probable class name of each image."""
        return [self.classes[i] for i in self.logits(images).argmax(1).tolist()]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this model as a model file (e.g. the ``model.pt`` of a run made before
        runs wrote one): its weights as they are now, with the rest of its fields."""
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        fields = {k: v for k, v in self.fields.items() if k not in ("format", "version")}
        save_model_file(path, {**fields, "state_dict": state})


def _check_uint8(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = (
            f"{images.dtype} of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise ValueError(f"expected uint8 images (N, C, H, W) with values 0..255, got {got}")


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each image through the image-file reader's resize (8-bit RGB, scaled to cover,
    centre-cropped), so that tensors and files of the same pixels are read alike."""
    from PIL import Image

    out = []
    for image in images:
        pixels = image.permute(1, 2, 0).contiguous().numpy()
        pil = Image.fromarray(pixels[:, :, 0] if image.shape[0] == 1 else pixels).convert("RGB")
        out.append(cover_crop(pil, height, width))
    return torch.stack(out)


def _rebuild(fields: dict[str, Any], path: Path) -> nn.Module:
    """The architecture the fields name, with their weights (the global random state is
    left as it was: building a model draws its initial weights)."""
    m = fields["model"]
    written = f"mwnet {fields.get('mwnet_version', '?')}"
    try:
        with torch.random.fork_rng(devices=[]):
            module = models.build(
                m["name"],
                num_classes=m["num_classes"],
                in_channels=m["in_channels"],
                **m["options"],
            )
    except (ValueError, TypeError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelFileError(
            f"{path}: cannot build its model {m['name']!r} with options {m['options']} "
            f"({detail}); a model registered by your own code must be registered (imported) "
            f"before loading, or use the mwnet version that wrote the file ({written})"
        ) from None
    try:
        module.load_state_dict(fields["state_dict"])
    except RuntimeError as err:
        # torch's first line only names the class; the second says what does not fit
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = (lines[1:] or lines or [type(err).__name__])[0][:200]
        raise ModelFileError(
            f"{path}: its weights do not fit model {m['name']!r} with options {m['options']} "
            f"({detail}); the file is damaged or was edited: copy it again from its run "
            "directory"
        ) from None
    return module


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedModel:
    """The trained model at ``path``: a model file, a run directory (its ``model.pt``, or
    for runs made before runs wrote one its ``checkpoint.pt`` and ``config.yaml``), or a
    run's ``checkpoint.pt`` (with the ``config.yaml`` beside it).

    Raises:
        ModelFileError: one line naming the file, the cause and the fix: a missing file,
            a truncated or corrupt one, a file of another format, a layout version newer
            than this mwnet reads, or weights that do not fit the architecture.
    """
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_FILE).exists():
            return load_model(path / MODEL_FILE, device)
        if (path / CHECKPOINT).is_file() and (path / CONFIG).is_file():
            return LoadedModel(_fields_of_run(path, path / CHECKPOINT), path, device)
        raise ModelFileError(
            f"{path}: no {MODEL_FILE} in it, nor a {CHECKPOINT} with its {CONFIG} to rebuild "
            "the model from; point at the directory of a run that finished an epoch, or at a "
            "model file"
        )
    file = read_torch_file(path, MODEL_FILE_KIND)
    checkpoint = isinstance(file, dict) and file.get("format") == CHECKPOINT_FORMAT
    if checkpoint and (path.parent / CONFIG).is_file():
        return LoadedModel(_fields_of_run(path.parent, path), path, device)
    check_format(file, path)
    check_fields(file, path)
    return LoadedModel(file, path, device)


def _fields_of_run(run_dir: Path, checkpoint: Path) -> dict[str, Any]:
    """The model file fields of a run's checkpoint: the run is rebuilt from its config on
    the CPU (its data read again, for the normalisation and the classes) and restored
    from the checkpoint, after checking that the two belong together."""
    from mwnet.run import load_checkpoint
    from mwnet.train import loop
    from mwnet.train.experiment import build_experiment
    from mwnet.train.shipped_model import model_fields

    cfg = loop.run_config(run_dir)
    cfg.device, cfg.threads = "cpu", None  # neither changes what was trained
    state = load_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        trainer = loop.Trainer(build_experiment(cfg), run_dir, quiet=True)
    loop.restore(trainer, state, checkpoint, evaluating=True)
    records = loop.read_jsonl(run_dir / loop.METRICS) if (run_dir / loop.METRICS).is_file() else []
    done = [r for r in records if r.get("epoch") == trainer.epoch]
    test_acc = done[-1].get("test_acc") if done else None
    fields = model_fields(trainer.exp, trainer.epoch, test_acc)
    return {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, **fields}
