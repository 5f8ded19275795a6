"""A trained model exported for torch alone (``torch.export``): uint8 images in, class
probabilities out, the normalisation inside.

The exported program is the network with the model file's pixel scaling and
normalisation in front of it and a softmax behind, traced for any batch size, so a
consumer without mwnet (a service, another team's code) gets the same probabilities as
:meth:`~mwnet.predict.model.LoadedModel.predict_proba` from the same ``uint8`` images.
Reading and resizing image files stays outside it: it takes images of the model's size
and channels. The class names and input description travel in the archive as
``mwnet.json`` (``torch.export.load(path, extra_files={"mwnet.json": ""})`` fills it in).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mwnet.predict.model import LoadedModel
from mwnet.run.atomic import atomic_write

EXPORT_INFO = "mwnet.json"


class _Pipeline(nn.Module):
    """``uint8`` images -> probabilities, with exactly the operations of
    :func:`mwnet.data.to_float` (multiply by ``1 / (255 std)``, subtract ``mean / std``, in
    float32) in front of the network, so its outputs equal the loaded model's bit for bit.
    A table model takes its rows, ``float32`` ``(N, D, 1, 1)``, in their own units (no
    1/255), as :func:`~mwnet.data.to_float` takes them."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.module = model.module
        norm = model.input.normalize
        self.normalized = norm is not None
        self.features = model.input.table is not None
        unit = 1.0 if self.features else 255.0
        if norm is not None:
            std = torch.tensor(norm.std).view(1, -1, 1, 1)
            mean = torch.tensor(norm.mean).view(1, -1, 1, 1)
            self.register_buffer("scale", 1 / (unit * std))
            self.register_buffer("shift", mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.normalized:
            x = x.mul(self.scale).sub(self.shift)
        elif not self.features:
            x = x.mul(1 / 255)
        return torch.softmax(self.module(x).float(), dim=1)


def export_model(model: LoadedModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a ``torch.export`` archive (``.pt2``) at ``path``, atomically.

    Raises:
        RuntimeError: torch cannot export the architecture (data-dependent control flow
            and the like); the model file itself is unaffected.
    """
    path = Path(path)
    spec = model.input
    pipeline = _Pipeline(model).to(model.device).eval()
    dtype = torch.float32 if spec.table is not None else torch.uint8
    example = torch.zeros(
        (2, spec.channels, spec.height, spec.width), dtype=dtype, device=model.device
    )
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(pipeline, (example,), dynamic_shapes=({0: batch},))
    info = {
        "classes": model.classes,
        "input": {
            **model.fields["input"],
            "dtype": str(dtype).removeprefix("torch."),
            "layout": "NCHW",
        },
        "output": "class probabilities (softmax), float32 (N, len(classes))",
        "model": model.fields["model"]["name"],
        "mwnet_version": model.fields.get("mwnet_version"),
    }
    with atomic_write(path, "wb") as f:
        torch.export.save(program, f, extra_files={EXPORT_INFO: json.dumps(info)})
    return path
