"""The CIFAR ResNets of He et al. (2016, section 4.2), used by the paper for ResNet-32.

Depth 6n+2: a 3x3 conv to 16 channels, BN, ReLU; three stages of n post-activation
BasicBlocks (16, 32, 64 channels; the stride 2 of stages 2 and 3 sits in the first 3x3
conv of the stage's first block); global average pooling (over the final 8x8 map for a
32x32 image); one linear layer. Shortcuts are "option A": parameter-free, which is what
keeps ResNet-32 at 0.46M parameters and what the paper's numbers were measured with.

The option-A shortcut has the layout of the Meta-Weight-Net / CMW-Net authors' ResNet-32,
so that identical weights give identical outputs: where a block changes shape, its input
is subsampled by keeping rows and columns 0, 2, 4, ... (``x[:, :, ::2, ::2]``) and the
missing channels are zeros on *both* sides of the channel dimension, ``planes // 4``
before and ``planes // 4`` after when the width doubles. So at 16 -> 32 channels the
identity lands on output channels 8..23, and at 32 -> 64 on channels 16..47.
Initialisation: Kaiming-normal (fan-in) conv and linear weights, PyTorch's default
linear bias, BN weight 1 and bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.models.registry import register

CIFAR_SHAPE = (3, 32, 32)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel, add zero channels on both sides.

    The ``out_planes - in_planes`` zero channels are split as evenly as possible, the
    first half (rounded down) before the input channels and the rest after them; for the
    ResNets' doubling of the width that is ``out_planes // 4`` on each side, the reference
    layout (see the module docstring). It has no parameters, so the identity path stays
    an identity for the channels that exist and adds nothing to the parameter count
    (unlike a 1x1 projection).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"cannot zero-pad {in_planes} channels down to {out_planes}")
        self.extra = out_planes - in_planes
        self.before = self.extra // 2
        self.after = self.extra - self.before
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after)) if self.extra else x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (post-activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ZeroPadShortcut(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; see the module docstring."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"need at least one block per stage, got {blocks_per_stage}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stage3(self.stage2(self.stage1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet of the given depth (20, 32, 44, 56, 110, ...; any 6n+2)."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, ...), got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)


@register("resnet20", input_shape=CIFAR_SHAPE)
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (n=3), 0.27M parameters."""
    return cifar_resnet(20, num_classes, in_channels)


@register("resnet32", input_shape=CIFAR_SHAPE)
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (n=5), the paper's model for flip noise and class imbalance; 0.46M parameters."""
    return cifar_resnet(32, num_classes, in_channels)


@register("resnet44", input_shape=CIFAR_SHAPE)
def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-44 (n=7), 0.66M parameters."""
    return cifar_resnet(44, num_classes, in_channels)


@register("resnet56", input_shape=CIFAR_SHAPE)
def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (n=9), 0.85M parameters."""
    return cifar_resnet(56, num_classes, in_channels)


@register("resnet110", input_shape=CIFAR_SHAPE)
def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 (n=18), 1.7M parameters."""
    return cifar_resnet(110, num_classes, in_channels)
