import pytest
import torch
from torch import nn

from rbgp.nn import MaskedLinear, RBGPConv2d, RBGPLinear, sparsify


class TinyVGG(nn.Module):
    """A torchvision-free VGG/ResNet-style net: convs with BN, a residual add, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.res = nn.Conv2d(64, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        x = x + torch.relu(self.res(x))
        x = self.dw(x)
        x = nn.functional.adaptive_avg_pool2d(x, 2)
        return self.head(x)


def test_sparsify_swaps_and_trains_with_exact_masks():
    torch.manual_seed(0)
    model = TinyVGG()
    report = sparsify(model, 0.75, seed=0, init="kaiming")  # training from scratch
    assert isinstance(model.stem, nn.Conv2d) and type(model.stem) is nn.Conv2d  # first stays dense
    assert type(model.head[3]) is nn.Linear  # last stays dense
    assert type(model.dw) is nn.Conv2d  # grouped conv skipped
    assert isinstance(model.body[0], RBGPConv2d) and isinstance(model.head[1], RBGPLinear)
    assert len(report.layers) == 4
    assert report.params_after < report.params_before / 3
    assert "first layer (kept dense" in report.table() and "last layer (kept dense" in report.table()
    masks = {name: m.mask.clone() for name, m in model.named_modules() if isinstance(m, (RBGPConv2d, RBGPLinear))}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for name, m in model.named_modules():
        if name in masks:
            w = m.dense_weight()
            assert torch.equal(m.mask, masks[name])
            assert torch.all(w[~m.mask] == 0)


def test_sparsify_baseline_patterns_and_exclude():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    report = sparsify(model, 0.75, "block", block=(8, 8), exclude=["4"])
    assert isinstance(model[2], MaskedLinear) and type(model[4]) is nn.Linear
    assert ("4", "excluded") in report.skipped


def test_stacked_rbgp_layers_mix_like_random_masks():
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(5)])
    report = sparsify(model, 0.9, seed=0)
    assert report.path_coverage is not None
    assert report.path_coverage >= report.random_path_coverage - 0.02
    unshuffled = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(5)])
    plain = sparsify(unshuffled, 0.9, seed=0, shuffle=False)
    assert report.path_coverage >= plain.path_coverage


def test_sparsify_errors():
    with pytest.raises(ValueError, match="sparsity"):
        sparsify(nn.Sequential(nn.Linear(4, 4)), 1.0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        sparsify(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="cannot sparsify layer '1'.*a 5x7 weight cannot be made 0.9 sparse"):
        sparsify(nn.Sequential(nn.Linear(4, 7), nn.Linear(7, 5), nn.Linear(5, 2)), 0.9, on_infeasible="error",
                 distribution="uniform")
    report = sparsify(nn.Sequential(nn.Linear(4, 7), nn.Linear(7, 5), nn.Linear(5, 2)), 0.9, distribution="uniform")
    assert dict(report.skipped)["1"].endswith("the nearest feasible sparsity is 0.5714, more than 0.1 away")
    report = sparsify(nn.Sequential(nn.Linear(4, 7), nn.Linear(7, 1), nn.Linear(1, 2)), 0.9, distribution="uniform")
    assert dict(report.skipped)["1"] == "too small (no sparse rbgp4 structure fits a 1x7 weight)"
    with pytest.raises(ValueError, match="init"):
        sparsify(nn.Sequential(nn.Linear(4, 4)), 0.5, init="zeros")


def test_coverage_report_when_channel_masks_are_dense():
    # 1x1 blocks on 3x3 convs at 50%: every channel pair keeps some tap, the channel mask is dense
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 4, 3))
    report = sparsify(model, 0.5, block=(1, 1), conv_block="block")
    assert report.path_coverage == pytest.approx(1.0)
    assert report.random_path_coverage == pytest.approx(1.0)
