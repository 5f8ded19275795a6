"""Checks that need the built experiment, run before the first batch.

A model that cannot take the data's images (a 32x32 model on 28x28 images, a wrong
number of input channels) would otherwise fail inside the first training step with a
matrix-shape error from deep in torch, after the data has been loaded and the run
directory made. One sample through the model in eval mode, without a graph, finds it at
once; eval mode moves no BatchNorm statistic and draws no dropout mask, so the run that
follows is the same as without the check.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mwnet.config import ConfigError
from mwnet.data import Normalize, to_float


def check_model_fits(
    model: nn.Module,
    data: Any,
    normalize: Normalize | None,
    device: torch.device,
    model_name: str,
) -> None:
    """Raise a :class:`ConfigError` naming the fix if ``model`` cannot train on ``data``
    (a :class:`~mwnet.data.TrainData`): every set with the training images'
    shape, and one training image in, one score per class out."""
    shape = tuple(data.train_images.shape[1:])
    for name in ("meta", "test"):
        other = getattr(data, f"{name}_images")
        if len(other) and tuple(other.shape[1:]) != shape:
            raise ConfigError(
                f"the {name} images have shape {tuple(other.shape[1:])} but the training images "
                f"{shape}; give every set images of one size (data.image_size)"
            )
    if not len(data.train_images):
        raise ConfigError("the training set is empty; check data.subset and data.meta_per_class")
    x = to_float(data.train_images[:1].to(device), normalize)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        if getattr(data, "feature_names", None) is not None:
            raise ConfigError(
                f"model {model_name!r} cannot take this table's rows of {shape[0]} features "
                f"({detail}); use model.name=linear or model.name=mlp, which take their input "
                "width from the table"
            ) from None
        raise ConfigError(
            f"model {model_name!r} cannot take this data's {'x'.join(map(str, shape))} images "
            f"({detail}); choose a model for this input size (for cnn_small and mlp, "
            f"model.options.image_size={shape[-1]}), or resize the images (data.image_size "
            "for folder and list data)"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {model_name!r} outputs {got} for one image, but the data has "
            f"{data.num_classes} classes: it must output (batch, {data.num_classes}) scores; "
            "check model.options"
        )
