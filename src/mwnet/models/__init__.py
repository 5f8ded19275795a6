"""Classifiers for the paper's experiments, found by name through one small registry.

``build("resnet32", num_classes=10)`` gives the paper's CIFAR ResNet-32,
``build("wrn28_10")`` its WRN-28-10, ``build("preact_resnet18")`` CMW-Net's PreAct
ResNet-18 for label correction, ``build("cnn_small")``/``build("mlp")`` small
models for Fashion-MNIST on a CPU, and ``build("torchvision:<name>")`` any torchvision
classifier (torchvision optional). Any ``nn.Module`` works with the core; these are
conveniences, not requirements.
"""

from mwnet.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    ZeroPadShortcut,
    cifar_resnet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from mwnet.models.preact_resnet import PreActBlock, PreActResNet, preact_resnet18
from mwnet.models.registry import available, build, input_shape, register
from mwnet.models.small import MLP, SmallCNN, cnn_small, mlp
from mwnet.models.wide_resnet import WideBlock, WideResNet, wide_resnet, wrn28_10

__all__ = [
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "PreActBlock",
    "PreActResNet",
    "SmallCNN",
    "WideBlock",
    "WideResNet",
    "ZeroPadShortcut",
    "available",
    "build",
    "cifar_resnet",
    "cnn_small",
    "input_shape",
    "mlp",
    "preact_resnet18",
    "register",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "wide_resnet",
    "wrn28_10",
]
