"""PreAct ResNet-18 for CIFAR (He et al., 2016, "Identity Mappings in Deep Residual Networks").

This is the network CMW-Net uses for label correction (CMW-Net-SL) on CIFAR-10/100 with
noisy labels, laid out as in the authors' code (the PreResNet that DivideMix also uses),
so that identical weights give identical outputs:

- stem: a 3x3 conv to 64 channels, stride 1, no bias (no 7x7 conv, no max-pool: the image
  is only 32x32), then BN and ReLU;
- four stages of two pre-activation blocks, 64, 128, 256 and 512 channels, stride 2 in
  the first 3x3 conv of stages 2-4 (32x32 -> 32, 16, 8, 4);
- block: ``pre = relu(bn1(x))``, ``out = conv2(relu(bn2(conv1(pre))))``, and the shortcut
  is added to ``out`` with no activation after the sum. The shortcut reads ``pre``, never
  the raw ``x``: a 1x1 conv (stride 2 or wider, no bias, no BN) of ``pre`` where the
  shape changes, and ``pre`` itself elsewhere. This is where the authors' code differs
  from the paper, whose identity shortcuts carry the raw ``x``; with BN in every block it
  is a different function, so it is followed here;
- no BN-ReLU after the last stage (the paper has one; the authors' code does not): the
  last block's sum is pooled directly;
- global average pooling, then one linear layer with bias. The authors pool with
  ``avg_pool2d(kernel 4)``, which is the global mean exactly when the final map is 4x4,
  i.e. for 32x32 (and 28x28) inputs; adaptive pooling gives the same numbers there and
  also works for other image sizes.

No conv has a bias. Initialisation is PyTorch's default for every layer, as in the
authors' code. ``width`` scales all four stages (64 is the published network); smaller
widths keep tests and CPU experiments cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.models.cifar_resnet import CIFAR_SHAPE
from mwnet.models.registry import register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut of the first BN-ReLU's output.

    The shortcut takes the pre-activated input in every block, also where it is an
    identity, because that is the layout CMW-Net's label-correction results were
    measured with (see the module docstring).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (pre if self.shortcut is None else self.shortcut(pre))


class PreActResNet(nn.Module):
    """PreAct ResNet with two blocks per stage by default (ResNet-18); see the module docstring."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError(f"need four stages of >= 1 block, got {tuple(blocks_per_stage)}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        in_planes = width
        for k, (n, stride) in enumerate(zip(blocks_per_stage, (1, 2, 2, 2), strict=True)):
            planes = width * 2**k
            blocks = []
            for i in range(n):
                blocks.append(PreActBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stage4(self.stage3(self.stage2(self.stage1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register("preact_resnet18", input_shape=CIFAR_SHAPE)
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> PreActResNet:
    """PreAct ResNet-18, CMW-Net's model for label correction on CIFAR; 11.2M parameters
    (11,171,274 for 10 classes, 11,217,444 for 100) at the default ``width=64``.

    Takes any image size (e.g. ``in_channels=1`` for 28x28 Fashion-MNIST).
    """
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width)
