"""torchvision models by name, imported only when one is asked for.

torchvision is optional: mwnet itself needs only torch, and a CPU-only torch should not
have to pull in a torchvision build. ``build("torchvision:resnet50", ...)`` imports it
here, at call time, and says how to install it when it is missing.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
from torch import nn


def _torchvision_models() -> ModuleType:
    try:
        import torchvision.models as tv_models
    except ImportError as err:
        raise ImportError(
            "torchvision models need the optional package torchvision: "
            "`pip install torchvision` (pick the build matching your torch), "
            "or use one of mwnet's own models (mwnet.models.available())"
        ) from err
    return tv_models


def torchvision_names() -> list[str]:
    """Classification model names torchvision knows (empty if it is not installed)."""
    try:
        tv_models = _torchvision_models()
    except ImportError:
        return []
    return sorted(tv_models.list_models(module=tv_models))


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the model's last ``nn.Linear`` for a fresh one with ``num_classes`` outputs.

    torchvision heads live under different names (``fc``, ``classifier[-1]``,
    ``heads.head``, ...); the last registered Linear layer is the output layer in all of
    its classification models that have one.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear output layer to replace; "
            "set its classifier by hand"
        )
    name, old = linears[-1]
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def build_torchvision(
    name: str,
    num_classes: int,
    in_channels: int | None = None,
    weights_path: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Build torchvision's ``name`` with ``num_classes`` outputs.

    Without ``weights_path`` the model is built with ``num_classes`` outputs and random
    weights. With it, the model is built with its default head, the local state dict is
    loaded (``torch.load(weights_only=True)``: tensors only, no pickled code) and the
    last linear layer is replaced by a fresh one with ``num_classes`` outputs — the usual
    fine-tuning start (e.g. ImageNet ResNet-50 for Clothing1M). Nothing is downloaded.
    """
    if in_channels not in (None, 3):
        raise ValueError(
            f"torchvision models take 3-channel images, got in_channels={in_channels}; "
            "repeat grey images to 3 channels (x.expand(-1, 3, -1, -1))"
        )
    tv_models = _torchvision_models()
    if name not in tv_models.list_models(module=tv_models):
        raise ValueError(
            f"torchvision has no classification model {name!r}; see "
            "mwnet.models.available(torchvision=True)"
        )
    if weights_path is None:
        return tv_models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    model = tv_models.get_model(name, weights=None, **kwargs)
    state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return replace_classifier(model, num_classes)
