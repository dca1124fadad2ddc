"""Arguments, inputs and state loading of the sparse layers: clear errors, nn.Linear / nn.Conv2d semantics."""

import pytest
import torch
from torch import nn

from rbgp.nn import MaskedConv2d, MaskedLinear, RBGPConv2d, RBGPLinear

LINEARS = [RBGPLinear, MaskedLinear]
CONVS = [RBGPConv2d, MaskedConv2d]


@pytest.mark.parametrize("cls", CONVS)
@pytest.mark.parametrize("bad, message", [
    ({"stride": 0}, r"stride must be an integer >= 1 or a pair of them .*got 0"),
    ({"stride": (1, 0)}, r"stride must be an integer >= 1 .*got \(1, 0\)"),
    ({"stride": 1.5}, r"stride must be an integer >= 1 .*got 1\.5"),
    ({"stride": (1, 1, 1)}, r"stride must be an integer >= 1 or a pair"),
    ({"dilation": 0}, r"dilation must be an integer >= 1 .*got 0"),
    ({"dilation": -2}, r"dilation must be an integer >= 1 .*got -2"),
    ({"padding": -1}, r"padding must be an integer >= 0, a pair of them, 'valid' or 'same', got -1"),
    ({"padding": (0, -1)}, r"padding must be an integer >= 0.*got \(0, -1\)"),
    ({"padding": "full"}, r"padding must be .*'valid' or 'same', got 'full'"),
    ({"padding": "same", "stride": 2}, r"padding='same' needs stride 1"),
    ({"kernel_size": 0}, r"kernel_size must be an integer >= 1 .*got 0"),
    ({"kernel_size": (3, 0)}, r"kernel_size must be an integer >= 1 .*got \(3, 0\)"),
    ({"kernel_size": True}, r"kernel_size must be an integer >= 1 .*got True"),
    ({"in_channels": 0}, r"in_channels must be an integer >= 1, got 0"),
    ({"out_channels": -4}, r"out_channels must be an integer >= 1, got -4"),
    ({"padding_mode": "mirror"}, r"padding_mode"),
])
def test_conv_arguments_checked_at_construction(cls, bad, message):
    kw = {"in_channels": 16, "out_channels": 16, "kernel_size": 3, "sparsity": 0.75, **bad}
    with pytest.raises(ValueError, match=message):
        cls(**kw)


@pytest.mark.parametrize("cls", CONVS)
def test_conv_accepts_what_nn_conv2d_accepts(cls):
    for kw in [{"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}, {"padding": "valid"},
               {"padding": "same", "dilation": 2}, {"kernel_size": (3, 1), "stride": [1, 2], "padding": 2}]:
        kw = {"kernel_size": 3, **kw}
        layer = cls(16, 16, sparsity=0.75, **kw)
        dense = nn.Conv2d(16, 16, **kw)
        x = torch.randn(2, 16, 9, 8)
        assert layer(x).shape == dense(x).shape


@pytest.mark.parametrize("cls", LINEARS)
@pytest.mark.parametrize("args, message", [
    ((0, 16), "in_features must be an integer >= 1, got 0"),
    ((16, 0), "out_features must be an integer >= 1, got 0"),
    ((-1, 16), "in_features must be an integer >= 1, got -1"),
    ((16.0, 16), r"in_features must be an integer >= 1, got 16\.0"),
])
def test_linear_sizes_checked_at_construction(cls, args, message):
    with pytest.raises(ValueError, match=message):
        cls(*args, sparsity=0.75)


@pytest.mark.parametrize("cls", LINEARS)
def test_linear_inputs_follow_nn_linear(cls):
    torch.manual_seed(0)
    layer = cls(16, 16, 0.75)
    for shape in [(16,), (3, 16), (2, 3, 16), (0, 16)]:  # any leading dims, 1-D included
        x = torch.randn(shape)
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.dense_weight(), layer.bias))
    for bad, shown in [(torch.tensor(1.0), "a scalar"), (torch.randn(3, 15), r"shape \(3, 15\)"),
                       (torch.randn(16, 3), r"shape \(16, 3\)")]:
        with pytest.raises(ValueError, match=rf"expected input \(\.\.\., 16\).*in_features = 16.*got {shown}"):
            layer(bad)


@pytest.mark.parametrize("cls", CONVS)
def test_conv_inputs_follow_nn_conv2d(cls):
    torch.manual_seed(0)
    layer = cls(16, 32, 3, padding=1, sparsity=0.75)
    x = torch.randn(16, 5, 6)  # unbatched (C, H, W)
    y = layer(x)
    assert y.shape == (32, 5, 6)
    torch.testing.assert_close(y, nn.functional.conv2d(x, layer.dense_weight(), layer.bias, padding=1),
                               atol=1e-4, rtol=1e-4)
    xs = x.clone().requires_grad_()
    layer(xs).sum().backward()
    assert xs.grad.shape == x.shape
    for bad, shown in [(torch.tensor(2.0), "a scalar"), (torch.randn(2, 15, 5, 5), r"shape \(2, 15, 5, 5\)"),
                       (torch.randn(16, 5), r"shape \(16, 5\)"), (torch.randn(1, 2, 16, 5, 5), "shape"),
                       (torch.randn(15, 5, 5), r"shape \(15, 5, 5\)")]:
        with pytest.raises(ValueError, match=rf"expected input \(N, 16, H, W\) or unbatched \(16, H, W\).*got {shown}"):
            layer(bad)


# ---- state loading -----------------------------------------------------------------------------------------


def _nested(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), layer)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("make", [lambda seed: RBGPLinear(64, 64, 0.75, seed=seed),
                                  lambda seed: RBGPConv2d(16, 32, 3, sparsity=0.75, seed=seed)])
def test_rbgp_values_never_land_on_another_structure(make, strict):
    source = make(0)
    saved = {f"1.{k}": v for k, v in source.state_dict().items()}
    other = _nested(make(1))
    before = other[1].values.detach().clone()
    with pytest.raises(RuntimeError, match=r"layer '1': the state has 1\.values but no 1\.structure_id"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "1.structure_id"}, strict=strict)
    with pytest.raises(RuntimeError, match=r"layer '1': the state was saved from another sparsity structure"):
        other.load_state_dict(saved, strict=strict)
    wrong = {**saved, "1.structure_id": torch.zeros(3, dtype=torch.int64)}
    with pytest.raises(RuntimeError, match=r"layer '1'.*another sparsity structure.*unreadable"):
        other.load_state_dict(wrong, strict=strict)
    assert torch.equal(other[1].values, before)  # nothing was loaded
    twin = _nested(make(0))
    twin.load_state_dict(saved, strict=strict)
    assert torch.equal(twin[1].dense_weight(), source.dense_weight())  # the same structure loads


def test_rbgp_fitted_structure_loads_from_its_indices_without_the_id():
    from rbgp.patterns import RBGP4

    torch.manual_seed(0)
    w = torch.randn(64, 64)
    fitted = RBGPLinear(64, 64, 0.75, structure=RBGP4().fit(w.numpy(), (64, 64), 0.75, 0))
    state = fitted.state_dict()
    assert {"row_index", "col_index", "structure_id"} <= set(state)
    fresh = RBGPLinear(64, 64, 0.75)
    assert not torch.equal(fresh.mask, fitted.mask)
    fresh.load_state_dict({k: v for k, v in state.items() if k != "structure_id"}, strict=False)
    assert torch.equal(fresh.structure_id, fitted.structure_id)  # the indices give the structure
    assert torch.equal(fresh.dense_weight(), fitted.dense_weight())


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("make", [lambda seed: MaskedLinear(64, 32, 0.75, seed=seed),
                                  lambda seed: MaskedConv2d(8, 16, 3, sparsity=0.75, seed=seed)])
def test_masked_weights_never_land_on_another_mask(make, strict):
    torch.manual_seed(0)
    source = make(0)
    saved = {f"1.{k}": v for k, v in source.state_dict().items()}
    other = _nested(make(1))
    assert not torch.equal(other[1].mask, source.mask)
    before = other[1].weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"layer '1': the state has 1\.weight but no 1\.mask"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "1.mask"}, strict=strict)
    for bad, message in [(torch.ones(3, dtype=torch.bool), r"layer '1': the saved mask is \(3,\)"),
                         (torch.full(source.mask.shape, 0.5), "layer '1': the saved mask holds values other than"),
                         ([1, 0], "layer '1': the saved mask is list")]:
        with pytest.raises(RuntimeError, match=message):
            other.load_state_dict({**saved, "1.mask": bad}, strict=strict)
    assert torch.equal(other[1].weight, before) and not torch.equal(other[1].mask, source.mask)
    # a state with its mask is self-describing: the layer adopts the mask, and its structure follows
    other.load_state_dict(saved, strict=strict)
    layer = other[1]
    assert torch.equal(layer.mask, source.mask) and torch.equal(layer.dense_weight(), source.dense_weight())
    assert torch.equal(torch.as_tensor(layer.structure.weight_mask()), source.mask)
    assert layer.structure.nnz == source.structure.nnz and layer.density == source.density
    assert layer.structure.structure_bytes == source.structure.structure_bytes
    # a 0/1 float mask is taken as the bool one
    again = _nested(make(1))
    again.load_state_dict({**saved, "1.mask": source.mask.float()}, strict=strict)
    assert torch.equal(again[1].mask, source.mask) and again[1].mask.dtype == torch.bool


def test_partial_states_without_values_still_load():
    layer = _nested(RBGPLinear(64, 64, 0.75))
    bias = torch.randn(64)
    layer.load_state_dict({"1.bias": bias}, strict=False)
    assert torch.equal(layer[1].bias, bias)
    masked = _nested(MaskedLinear(64, 64, 0.75))
    masked.load_state_dict({"1.bias": bias}, strict=False)
    assert torch.equal(masked[1].bias, bias)


def test_rbgp_fitted_structure_of_another_plan_loads_and_a_refused_one_changes_nothing():
    from rbgp.patterns import RBGP4

    torch.manual_seed(0)
    w = torch.randn(64, 64)
    fine = RBGPLinear(64, 64, 0.75, structure=RBGP4(group_rows=4).fit(w.numpy(), (64, 64), 0.75, 0))
    state = fine.state_dict()
    fresh = RBGPLinear(64, 64, 0.75)  # the default plan: other group sizes, so other values shapes
    assert fresh.values.shape != fine.values.shape
    bad = {**state, "structure_id": fresh.structure_id.clone()}  # an id that does not fit the indices
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(RuntimeError, match="does not match its saved row_index and col_index"):
        fresh.load_state_dict(bad)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # refused: nothing changed
    fresh.load_state_dict(state)
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), fine(x))
    assert fresh.values.shape == fine.values.shape and fresh.values.requires_grad


def test_rbgp_saved_columns_must_be_increasing():
    from rbgp.patterns import RBGP4

    torch.manual_seed(0)
    fitted = RBGPLinear(64, 64, 0.75, structure=RBGP4().fit(torch.randn(64, 64).numpy(), (64, 64), 0.75, 0))
    state = {k: v.clone() for k, v in fitted.state_dict().items()}
    state["col_index"][0, 1] = state["col_index"][0, 0]  # a duplicated column
    fresh = RBGPLinear(64, 64, 0.75)
    with pytest.raises(RuntimeError, match="increasing order without repeats; group 0"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "structure_id"})
