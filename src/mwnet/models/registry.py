"""Models found by name: one dictionary of builders, filled by a decorator.

Training code and the CLI ask for ``build("resnet32", num_classes=10)`` instead of
importing classes, so a config file or a command line can name any model, including
torchvision ones (``"torchvision:resnet18"``), which are resolved only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

TORCHVISION_PREFIX = "torchvision:"

Builder = Callable[..., nn.Module]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and the input it expects by default."""

    builder: Builder
    input_shape: tuple[int, int, int]
    """(channels, height, width) of the images the model is meant for, e.g. for benchmarks."""


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, input_shape: tuple[int, int, int]) -> Callable[[B], B]:
    """Decorator: make ``builder(num_classes, in_channels, **kwargs)`` available as ``name``."""

    def decorate(builder: B) -> B:
        if name in _REGISTRY or name.startswith(TORCHVISION_PREFIX):
            raise ValueError(f"model name {name!r} is already taken")
        _REGISTRY[name] = ModelEntry(builder, input_shape)
        return builder

    return decorate


def available(torchvision: bool = False) -> list[str]:
    """Names :func:`build` accepts, sorted.

    With ``torchvision=True`` and torchvision installed, also every
    ``"torchvision:<name>"`` that ``torchvision.models.list_models()`` knows.
    """
    names = sorted(_REGISTRY)
    if torchvision:
        from mwnet.models.torchvision_models import torchvision_names

        names += [TORCHVISION_PREFIX + n for n in torchvision_names()]
    return names


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown model {name!r}; available: {', '.join(available())}, "
        f"or '{TORCHVISION_PREFIX}<name>' for a torchvision model"
    )


def input_shape(name: str) -> tuple[int, int, int]:
    """Default (channels, height, width) for ``name``: 3x32x32 for CIFAR nets, 1x28x28 for the
    small Fashion-MNIST nets, 3x224x224 for torchvision (ImageNet) models."""
    if name.startswith(TORCHVISION_PREFIX):
        return (3, 224, 224)
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name].input_shape


def build(name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: one of :func:`available`, or ``"torchvision:<name>"`` (needs torchvision;
            accepts ``weights_path=`` to load a local state dict and swap the classifier).
        num_classes: size of the output layer.
        in_channels: input image channels; ``None`` takes the model's own default (the
            channels of :func:`input_shape`), so ``build("cnn_small")`` fits Fashion-MNIST
            and ``build("resnet32")`` fits CIFAR.
        **kwargs: passed to the builder (e.g. ``depth``/``width`` for ``"wrn"``).

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if name.startswith(TORCHVISION_PREFIX):
        from mwnet.models.torchvision_models import build_torchvision

        return build_torchvision(
            name[len(TORCHVISION_PREFIX) :], num_classes, in_channels=in_channels, **kwargs
        )
    if name not in _REGISTRY:
        raise _unknown(name)
    entry = _REGISTRY[name]
    channels = entry.input_shape[0] if in_channels is None else in_channels
    return entry.builder(num_classes=num_classes, in_channels=channels, **kwargs)
