"""Wide ResNets (Zagoruyko & Komodakis, 2016), used by the paper (WRN-28-10) for uniform noise.

WRN-d-k: a 3x3 conv to 16 channels, three groups of (d-4)/6 pre-activation blocks with
16k, 32k, 64k channels (stride 2 at the start of groups 2 and 3), a final BN-ReLU,
global average pooling and a linear layer. Where a block changes shape its shortcut is a
1x1 convolution fed by the block's first BN-ReLU, as in the reference implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.models.cifar_resnet import CIFAR_SHAPE
from mwnet.models.registry import register


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut (pre-activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 images; see the module docstring."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 28, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_planes = 16
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.group1, self.group2, self.group3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.group3(self.group2(self.group1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register("wrn", input_shape=CIFAR_SHAPE)
def wide_resnet(
    depth: int = 28,
    width: int = 10,
    num_classes: int = 10,
    dropout: float = 0.0,
    in_channels: int = 3,
) -> WideResNet:
    """WRN-``depth``-``width``; the paper uses WRN-28-10 without dropout."""
    return WideResNet(depth, width, num_classes, dropout, in_channels)


@register("wrn28_10", input_shape=CIFAR_SHAPE)
def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10, the paper's model for uniform noise; 36.5M parameters."""
    return WideResNet(28, 10, num_classes, dropout, in_channels)
