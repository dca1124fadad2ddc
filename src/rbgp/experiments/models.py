"""Dense reference models for the training experiments (plain ``nn.Linear``/``nn.Conv2d``).

Sparsification happens later by swapping these layers in place, so every model here uses only
plain ``nn.Linear`` and ``nn.Conv2d`` for its weights, and its input and output layers are the
first and last such modules in ``model.modules()`` order (they are usually kept dense).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "ResNet",
    "SmallCNN",
    "VGG",
    "WideResNet",
    "build_model",
    "resnet18",
    "vgg19_bn",
    "wrn",
]


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU), unit/zero BatchNorm, zero Linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # BN follows, so no bias
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MLP(nn.Module):
    """Flatten, then ``Linear + ReLU`` per hidden width, then a final ``Linear``."""

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (1024, 1024, 1024),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects {self.in_features} features per sample, got {x.shape[1]}")
        return self.net(x)


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU blocks for 28x28 inputs; 2x2 max-pool after all but the last block."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32, 64, 128),
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("SmallCNN needs at least one channel width")
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(channels):
            layers += _conv_bn_relu(cin, cout)
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """CIFAR-style VGG: conv3x3-BN-ReLU stages with max-pools, then one ``Linear``."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(cin, int(v))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # identity for 32x32 inputs (1x1 maps remain)
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg19_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG19 with BatchNorm for 32x32 inputs (about 20.0M parameters for 10 classes)."""
    return VGG(VGG19_CFG, num_classes, in_channels)


class _WideBasic(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the shape changes the shortcut is a 1x1 conv applied to the pre-activated input.
    """

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(a)))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-depth-k for CIFAR (Zagoruyko & Komodakis): 3 groups of widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int = 40,
        widen_factor: int = 4,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for group, stride in zip(range(1, 4), (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBasic(cin, widths[group], stride if i == 0 else 1, dropout))
                cin = widths[group]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


def wrn(
    depth: int = 40,
    widen_factor: int = 4,
    num_classes: int = 10,
    dropout: float = 0.0,
    in_channels: int = 3,
) -> WideResNet:
    """WideResNet for CIFAR; the defaults give WRN-40-4 (about 8.9M parameters)."""
    return WideResNet(depth, widen_factor, num_classes, dropout, in_channels)


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al.) as commonly written for 32x32 inputs: a 3x3 stem, no max-pool,
    four stages of basic blocks at widths 64-512."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        cin = 64
        for i, (width, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            for j in range(count):
                layers.append(_BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 for 32x32 inputs (about 11.2M parameters for 10 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


_BUILDERS: dict[str, Callable[[int, int, int | None], nn.Module]] = {
    "mlp": lambda nc, cin, size: MLP(in_features=cin * (size or 28) ** 2, num_classes=nc),
    "cnn": lambda nc, cin, size: SmallCNN(in_channels=cin, num_classes=nc),
    "vgg19": lambda nc, cin, size: vgg19_bn(num_classes=nc, in_channels=cin),
    "wrn40_4": lambda nc, cin, size: wrn(40, 4, num_classes=nc, in_channels=cin),
    "resnet18": lambda nc, cin, size: resnet18(num_classes=nc, in_channels=cin),
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int | None = None) -> nn.Module:
    """Build one of :data:`MODEL_NAMES`; ``image_size`` (default 28) only sizes the MLP input."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    return _BUILDERS[name](num_classes, in_channels, image_size)
