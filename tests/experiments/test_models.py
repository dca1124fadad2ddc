"""Tests for rbgp.experiments.models: shapes, parameter counts, layer layout, init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rbgp.experiments import models as M
from rbgp.experiments.data import TensorLoader, synthetic


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, cin, size, classes",
    [("mlp", 1, 28, 10), ("cnn", 1, 28, 10), ("vgg19", 3, 32, 100), ("wrn40_4", 3, 32, 10), ("resnet18", 3, 32, 10)],
)
def test_output_shapes_and_layer_layout(name, cin, size, classes):
    torch.manual_seed(0)
    model = M.build_model(name, num_classes=classes, in_channels=cin).eval()
    with torch.no_grad():
        out = model(torch.randn(2, cin, size, size))
    assert out.shape == (2, classes)
    layers = _weight_layers(model)
    first, last = layers[0], layers[-1]
    assert (first.in_features if isinstance(first, nn.Linear) else first.in_channels) == (
        cin * size * size if name == "mlp" else cin
    )
    assert isinstance(last, nn.Linear) and last.out_features == classes
    # Only plain layers, so a later sparsify() pass can swap them by type.
    assert all(type(m) in (nn.Linear, nn.Conv2d) for m in layers)


def test_parameter_counts():
    assert _count(M.vgg19_bn(10)) == 20_035_018  # ~20.0M: bias-free convs + BN + Linear(512, 10)
    assert _count(M.wrn(40, 4, 10)) == 8_949_210  # WRN-40-4 ~8.9M
    assert _count(M.resnet18(10)) == 11_173_962  # ResNet-18 for CIFAR ~11.2M
    assert _count(M.MLP()) == 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10 + 3 * 1024 + 10


def test_vgg_structure():
    model = M.vgg19_bn(10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16
    assert model.classifier.in_features == 512


def test_wrn_structure():
    model = M.wrn(40, 4, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(convs) - len(shortcuts) == 37  # stem + 3 groups x 6 blocks x 2 convs
    assert [(s.in_channels, s.out_channels, s.stride) for s in shortcuts] == [
        (16, 64, (1, 1)), (64, 128, (2, 2)), (128, 256, (2, 2))
    ]
    assert model.fc.in_features == 256
    with pytest.raises(ValueError, match="6n\\+4"):
        M.wrn(depth=41)


def test_kaiming_conv_init():
    torch.manual_seed(0)
    conv = M.vgg19_bn(10).features[-4]  # last 512 -> 512 conv
    assert isinstance(conv, nn.Conv2d)
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2.0 / (512 * 9))) < 0.05 * std


def test_build_model_errors():
    with pytest.raises(ValueError) as info:
        M.build_model("resnet50")
    for name in M.MODEL_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="785"):
        M.MLP(in_features=784)(torch.randn(2, 785))


def test_small_cnn_fits_synthetic_data():
    torch.manual_seed(0)
    x, y = synthetic(128, (1, 28, 28), 10, seed=0)
    model = M.build_model("cnn", 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = TensorLoader(x, y, batch_size=32, seed=0)
    losses = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * losses[0]  # typically ~0.55 vs ~2.3
