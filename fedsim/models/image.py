"""Image classifiers for 28×28 grey images (Fashion-MNIST), each ending in an `nn.Linear`.

Every model keeps its architecture's own activation (ReLU for ResNet, SiLU for EfficientNet);
MLP and LeNet take `activation` as an option. Each is picked by the `_target_` of its
`conf/model/<name>.yaml` (`fedsim.models.image.MLP`, `...resnet18`, ...) and called by the task with
`num_classes`. A built model names its final linear layer in `last_layer` (the parameter prefix
of the target of label-recovery attacks, weight layout `(C, d)`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

__all__ = ["MLP", "LeNet", "SmallCNN", "efficientnet_b0", "resnet18"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Fully connected: flatten -> hidden layers -> `fc` (C, hidden[-1])."""

    last_layer = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 784,
        hidden: tuple[int, ...] = (256, 128),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class LeNet(nn.Module):
    """LeNet-5 for 28×28 inputs: two conv/pool stages, fc1 120, fc2 84, `fc3` (C, 84)."""

    last_layer = "fc3"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, activation: str = "relu"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), _activation(activation), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), _activation(activation), nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.act = _activation(activation)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(self.features(x)))
        return self.fc3(self.act(self.fc2(h)))


class SmallCNN(nn.Module):
    """Two conv stages and a hidden layer, made to learn at tiny batches (N = 4):
    conv3x3(width) - GroupNorm - act - pool, conv3x3(2 width) - GroupNorm - act - pool,
    `fc1` (hidden, 2 width * 49) - act, `fc` (C, hidden). GroupNorm (4 groups) normalises per
    sample, so it works at any batch size (BatchNorm does not at N = 4) and keeps the samples of
    a batch independent. The default SiLU gives non-ReLU features: Yin et al.'s sign rule fails
    on them, RLG does not.
    """

    last_layer = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
        hidden: int = 64,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"SmallCNN width must be a multiple of 4 (GroupNorm), got {width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(4, width),
            _activation(activation), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width),
            _activation(activation), nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.fc1 = nn.Linear(2 * width * 7 * 7, hidden)
        self.act = _activation(activation)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.fc1(self.features(x))))


def resnet18(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """torchvision ResNet-18 (ReLU), stem adapted to 28×28: 3×3 stride-1 conv, no max-pool."""
    net = tvm.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.last_layer = "fc"
    return net


def efficientnet_b0(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.2):
    """torchvision EfficientNet-B0 (SiLU), stem adapted to 28×28 grey: stride-1 first conv."""
    net = tvm.efficientnet_b0(weights=None, num_classes=num_classes, dropout=dropout)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    net.last_layer = "classifier.1"
    return net
