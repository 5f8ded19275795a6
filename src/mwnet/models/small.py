"""Small models for Fashion-MNIST-sized data: fast enough to train on a laptop CPU.

They exist so examples, tests and quick experiments need no GPU; they are not from
the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mwnet.models.registry import register

MNIST_SHAPE = (1, 28, 28)


class SmallCNN(nn.Module):
    """Two conv3x3-BN-ReLU-maxpool blocks (32, 64 channels), dropout, one linear layer."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4 (two 2x2 poolings), got {image_size}")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, 32), block(32, 64))
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * side * side, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("cnn_small", input_shape=MNIST_SHAPE)
def cnn_small(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28, dropout: float = 0.25
) -> SmallCNN:
    """A 0.05M-parameter CNN for 28x28 images (Fashion-MNIST); a few seconds per epoch on CPU."""
    return SmallCNN(num_classes, in_channels, image_size, dropout)


class MLP(nn.Module):
    """Flatten, then Linear-ReLU(-Dropout) per hidden width, then a linear output layer."""

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 784,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp(
    num_classes: int = 10,
    in_features: int = 784,
    hidden: Sequence[int] = (256,),
    dropout: float = 0.0,
) -> MLP:
    """A multilayer perceptron on flattened inputs; the cheapest baseline model."""
    return MLP(num_classes, in_features, hidden, dropout)


@register("mlp", input_shape=MNIST_SHAPE)
def _mlp_from_images(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    in_features: int | None = None,
    hidden: Sequence[int] = (256,),
    dropout: float = 0.0,
) -> MLP:
    """Registry entry: ``in_features`` defaults to in_channels x image_size², like the CNNs."""
    features = in_channels * image_size * image_size if in_features is None else in_features
    return mlp(num_classes, features, hidden, dropout)


@register("linear", input_shape=MNIST_SHAPE)
def linear(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    in_features: int | None = None,
) -> MLP:
    """Multinomial logistic regression on flattened inputs (an MLP without hidden layers):
    the usual model on precomputed embeddings, whose classes are often linearly separable.
    ``in_features`` defaults to in_channels x image_size², so on a table (``D`` features
    held as ``D`` channels of one pixel) it is ``D``."""
    features = in_channels * image_size * image_size if in_features is None else in_features
    return mlp(num_classes, features, (), 0.0)
