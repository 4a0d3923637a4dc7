"""Example models: small, real, trainable on this machine in seconds to a minute.

Module names are stable and meaningful: plans, recipes and export rules refer to them.
Every model takes a ``width`` multiplier (EfficientNet-style width scaling) so compressibility
can be studied against width.
"""

from __future__ import annotations

import torch
from torch import nn


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class LeNet5(nn.Module):
    """LeCun et al. 1998 topology (ReLU, max-pool) for 1x32x32 digits."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c3, f5, f6 = _w(6, width), _w(16, width), _w(120, width), _w(84, width)
        self.c1 = nn.Conv2d(1, c1, 5)
        self.relu1 = nn.ReLU()
        self.s2 = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(c1, c3, 5)
        self.relu3 = nn.ReLU()
        self.s4 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.f5 = nn.Linear(c3 * 25, f5)
        self.relu5 = nn.ReLU()
        self.f6 = nn.Linear(f5, f6)
        self.relu6 = nn.ReLU()
        self.out = nn.Linear(f6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.relu1(self.c1(x)))
        x = self.s4(self.relu3(self.c3(x)))
        x = self.flatten(x)
        x = self.relu5(self.f5(x))
        x = self.relu6(self.f6(x))
        return self.out(x)


class Conv1DNet(nn.Module):
    """1-D CNN for MNIST-1D signals (1x40): the sensor-ECU style task."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c = _w(32, width)
        self.conv1 = nn.Conv1d(1, c, 5, stride=2, padding=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv1d(c, c, 3, stride=2, padding=1)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c * 5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.conv3(x))
        return self.fc(self.flatten(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small residual CNN (ResNet-style basic blocks, 3 stages) for 1x32x32 digits."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _w(16, width), _w(32, width), _w(64, width)
        self.stem = nn.Conv2d(1, c1, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c1)
        self.stem_relu = nn.ReLU()
        self.layer1 = BasicBlock(c1, c1)
        self.layer2 = BasicBlock(c1, c2, stride=2)
        self.layer3 = BasicBlock(c2, c3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6()
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.expand(x)))
        y = self.relu2(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.use_res else y


class MobileNetV2Small(nn.Module):
    """MobileNetV2-style depthwise-separable CNN for 1x32x32 digits."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c0, c1, c2, c3, head = _w(16, width), _w(16, width), _w(24, width), _w(32, width), _w(128, width)
        self.stem = nn.Conv2d(1, c0, 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c0)
        self.stem_relu = nn.ReLU6()
        self.block1 = InvertedResidual(c0, c1, 1, 4)
        self.block2 = InvertedResidual(c1, c2, 2, 4)
        self.block3 = InvertedResidual(c2, c2, 1, 4)
        self.block4 = InvertedResidual(c2, c3, 2, 4)
        self.block5 = InvertedResidual(c3, c3, 1, 4)
        self.head = nn.Conv2d(c3, head, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(head)
        self.head_relu = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        x = self.block5(self.block4(self.block3(self.block2(self.block1(x)))))
        x = self.head_relu(self.head_bn(self.head(x)))
        return self.fc(self.flatten(self.pool(x)))


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: 1x1 | 1x1->3x3 | 1x1->5x5 | pool->1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(cin, c1, 1)
        self.b1_relu = nn.ReLU()
        self.b3_reduce = nn.Conv2d(cin, c3r, 1)
        self.b3_reduce_relu = nn.ReLU()
        self.b3 = nn.Conv2d(c3r, c3, 3, padding=1)
        self.b3_relu = nn.ReLU()
        self.b5_reduce = nn.Conv2d(cin, c5r, 1)
        self.b5_reduce_relu = nn.ReLU()
        self.b5 = nn.Conv2d(c5r, c5, 5, padding=2)
        self.b5_relu = nn.ReLU()
        self.bp_pool = nn.MaxPool2d(3, 1, 1)
        self.bp = nn.Conv2d(cin, cp, 1)
        self.bp_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.b1_relu(self.b1(x))
        b = self.b3_relu(self.b3(self.b3_reduce_relu(self.b3_reduce(x))))
        c = self.b5_relu(self.b5(self.b5_reduce_relu(self.b5_reduce(x))))
        d = self.bp_relu(self.bp(self.bp_pool(x)))
        return torch.cat([a, b, c, d], dim=1)


class InceptionSmall(nn.Module):
    """A stem plus two Inception blocks for 1x32x32 digits (the seed's mixed-precision example)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        w = lambda c: _w(c, width)  # noqa: E731
        self.stem = nn.Conv2d(1, w(32), 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.stem_pool = nn.MaxPool2d(2)
        self.inc1 = InceptionBlock(w(32), w(16), w(16), w(32), w(8), w(16), w(16))
        self.pool1 = nn.MaxPool2d(2)
        c_in2 = w(16) + w(32) + w(16) + w(16)
        self.inc2 = InceptionBlock(c_in2, w(32), w(32), w(48), w(8), w(16), w(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w(32) + w(48) + w(16) + w(16), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(self.stem_relu(self.stem(x)))
        x = self.pool1(self.inc1(x))
        x = self.inc2(x)
        return self.fc(self.flatten(self.pool(x)))
