"""Global sparsity spread over layers: uniform, ERK and the hardware-aware rule."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.nn import sparsify
from rbgp.nn.distribution import MIN_GROUP_ROWS, MIN_SPARSE_WIDTH, hw_group_rows, layer_densities
from rbgp.experiments.models import build_model

SHAPES = [(64, 64, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3), (10, 512)]


def _used(shapes, densities):
    return sum(d * math.prod(s) for s, d in zip(shapes, densities)) / sum(math.prod(s) for s in shapes)


@settings(max_examples=40, deadline=None)
@given(sparsity=st.floats(0.5, 0.97), kind=st.sampled_from(["uniform", "erk", "hw"]))
def test_every_rule_meets_the_budget(sparsity, kind):
    d = layer_densities(SHAPES, sparsity, kind)
    assert all(0 < x <= 1 for x in d)
    floors = layer_densities(SHAPES, 1 - 1e-9, kind) if kind == "hw" else [0.0] * len(SHAPES)
    # met exactly, unless the hw floors alone need more (then it is the floors)
    assert _used(SHAPES, d) == pytest.approx(max(1 - sparsity, _used(SHAPES, floors)), rel=1e-6)


def test_erk_gives_small_layers_more_density():
    d = layer_densities(SHAPES[:5], 0.9, "erk")
    assert d[0] > d[2] > d[4]


def test_hw_keeps_narrow_layers_dense_and_groups_large():
    shapes = [(32, 16, 3, 3)] + SHAPES[:5]
    d = layer_densities(shapes, 0.9, "hw")
    assert d[0] == 1.0 and d[1] < 1.0  # 32 rows: dense; 64 rows: sparse
    for shape, x in zip(shapes, d):
        if shape[0] < MIN_SPARSE_WIDTH:
            assert x == 1.0
        else:
            assert x >= 2 * MIN_GROUP_ROWS / shape[0] - 1e-12

def test_hw_relaxes_its_floors_until_the_budget_is_met():
    small_cnn = [(32, 16, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3)]
    at_75 = layer_densities(small_cnn, 0.75, "hw")  # the narrow layer dense while it fits, 8-row groups elsewhere
    assert at_75[:2] == [1.0, pytest.approx(16 / 64)] and _used(small_cnn, at_75) == pytest.approx(0.25)
    at_85 = layer_densities(small_cnn, 0.85, "hw")  # then sparse too, and 4-row groups
    assert at_85[0] == pytest.approx(8 / 32) and at_85[1] > 8 / 64 and _used(small_cnn, at_85) == pytest.approx(0.15)
    at_95 = layer_densities(small_cnn, 0.95, "hw")  # then smaller groups (2 rows here)
    assert at_95[:2] == [pytest.approx(4 / 32), pytest.approx(4 / 64)] and _used(small_cnn, at_95) == pytest.approx(0.05)
    # floors of 1-row groups that exceed the budget: the floors are returned, the budget is missed (and reported)
    assert layer_densities([(128, 128), (128, 128)], 0.999, "hw") == [pytest.approx(2 / 128)] * 2


def test_hw_halves_the_narrowest_layers_groups_first():
    """A bottleneck ResNet's shapes at 0.9: 8-row groups everywhere need more than the budget; the
    64-row layers drop to 4-row groups and the wider layers keep 8 (all of them halving together
    would leave the 128-row layers under their 8-row floor)."""
    shapes = ([(64, 64, 1, 1), (64, 64, 3, 3), (64, 256, 1, 1), (64, 64, 3, 3)] + [(256, 64, 1, 1)] * 3
              + [(128, 256, 1, 1), (128, 128, 3, 3), (128, 512, 1, 1), (128, 128, 3, 3)]
              + [(512, 128, 1, 1), (512, 128, 1, 1), (512, 256, 1, 1)])
    d = layer_densities(shapes, 0.9, "hw")
    assert _used(shapes, d) == pytest.approx(0.1)
    for shape, x in zip(shapes, d):
        rows = MIN_GROUP_ROWS // 2 if shape[0] == 64 else MIN_GROUP_ROWS
        assert x >= 2 * rows / shape[0] - 1e-12, (shape, x)
    assert min(x for shape, x in zip(shapes, d) if shape[0] == 64) < 2 * MIN_GROUP_ROWS / 64


@pytest.mark.parametrize("name", ["vgg19", "resnet18"])
@pytest.mark.parametrize("kind", ["erk", "hw"])
def test_sparsify_meets_the_global_budget_after_rounding(name, kind):
    """Each layer rounds to a feasible plan; re-solving over the rest keeps the total on budget."""
    report = sparsify(build_model(name, num_classes=10, in_channels=3), 0.9, init="kaiming", distribution=kind)
    assert abs(report.global_sparsity - 0.9) < 2e-3
    if kind == "hw":  # and the hw rule's plans keep row groups of 8 rows or more (16 for 512+ rows)
        assert all(r.rows_per_group >= hw_group_rows(r.weight_shape[0]) for r in report.layers)


def test_sparsify_with_a_distribution_on_resnet18():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sparsify(model, 0.9, init="kaiming", distribution="hw")
    assert not [n for n, why in report.skipped if why.startswith("kept dense by distribution")]
    assert all(r.rows_per_group >= MIN_GROUP_ROWS for r in report.layers)
    narrow = [r for r in report.layers if r.weight_shape[0] == 64]  # the four 64-channel convs, at their floor
    assert len(narrow) == 4 and all(r.sparsity == pytest.approx(1 - 2 * MIN_GROUP_ROWS / 64) for r in narrow)
    nonzeros = sum(r.params_after for r in report.layers)
    total = sum(r.params_before for r in report.layers)
    assert abs(1 - nonzeros / total - 0.9) < 2e-3
    assert report.recipe["distribution"] == "hw"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_distribution_errors():
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 128), torch.nn.Linear(128, 10))
    with pytest.raises(ValueError, match="distribution must be one of"):
        sparsify(net, 0.9, distribution="random")
    with pytest.raises(ValueError, match="spreads one global sparsity"):
        sparsify(net, {"1": 0.9}, distribution="erk")


def test_report_gives_flops_per_position():
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 256), torch.nn.Linear(256, 10))
    (layer,) = sparsify(net, 0.875, init="kaiming").layers
    assert layer.dense_flops == 2 * 256 * 256 and layer.flops == 2 * 256 * layer.nnz_per_row
    assert "131,072 -> 16,384" in sparsify(torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.Linear(256, 256), torch.nn.Linear(256, 10)), 0.875).table()
