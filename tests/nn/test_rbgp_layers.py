import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbgp.nn import MaskedConv2d, MaskedLinear, RBGPConv2d, RBGPLinear
from rbgp.patterns import RBGP4


def test_linear_matches_masked_dense_and_kaiming_scale():
    torch.manual_seed(0)
    layer = RBGPLinear(256, 128, 0.875, seed=1)
    x = torch.randn(9, 256)
    ref = torch.nn.functional.linear(x, layer.dense_weight(), layer.bias)
    assert torch.allclose(layer(x), ref, atol=1e-5)
    w = layer.dense_weight()
    assert torch.equal(w != 0, layer.mask)
    assert layer.mask.sum(dim=1).unique().tolist() == [layer.nnz_per_row]
    std = layer.values.std().item()
    assert abs(std - (2 / layer.nnz_per_row) ** 0.5) < 0.1 * std


def test_conv_matches_dense_conv_odd_shapes():
    torch.manual_seed(0)
    layer = RBGPConv2d(16, 32, 3, stride=2, padding=1, sparsity=0.75, seed=0)
    x = torch.randn(3, 16, 11, 9)
    ref = torch.nn.functional.conv2d(x, layer.dense_weight(), layer.bias, stride=2, padding=1)
    y = layer(x)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-4)
    # gradients too
    xr = x.clone().requires_grad_()
    layer(xr).sum().backward()
    g_layer = layer.values.grad.clone()
    w = layer.dense_weight().detach().requires_grad_()
    xr2 = x.clone().requires_grad_()
    torch.nn.functional.conv2d(xr2, w, layer.bias, stride=2, padding=1).sum().backward()
    assert torch.allclose(xr.grad, xr2.grad, atol=1e-4)
    from rbgp.ops import grouped_values
    assert torch.allclose(g_layer, grouped_values(w.grad.reshape(32, -1), layer.layout), atol=1e-3)


def test_state_dict_roundtrip_small_and_checked():
    layer = RBGPLinear(512, 512, 0.875, seed=3)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    dense_bytes = 512 * 512 * 4
    assert buf.tell() < 0.2 * dense_bytes
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    twin = RBGPLinear(512, 512, 0.875, seed=3)
    twin.load_state_dict(state)
    assert torch.equal(twin.dense_weight(), layer.dense_weight())
    other = RBGPLinear(512, 512, 0.875, seed=4)
    with pytest.raises(RuntimeError, match="another sparsity structure.*sha256.*this layer.*sha256"):
        other.load_state_dict(state)
    net = nn.Sequential(nn.ReLU(), other)
    with pytest.raises(RuntimeError, match="layer '1'.*no 1.structure_id"):  # names the layer, even non-strict
        net.load_state_dict({f"1.{k}": v for k, v in state.items() if k != "structure_id"}, strict=False)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_from_dense_keeps_weights_on_pattern():
    dense = nn.Linear(128, 64)
    layer = RBGPLinear.from_dense(dense, 0.75)
    w = layer.dense_weight()
    assert torch.equal(w[layer.mask], dense.weight.detach()[layer.mask])
    assert torch.equal(layer.bias, dense.bias)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    c = RBGPConv2d.from_dense(conv, 0.75)
    assert torch.equal(c.dense_weight()[c.mask], conv.weight.detach()[c.mask])
    with pytest.raises(ValueError, match="groups=1"):
        RBGPConv2d.from_dense(nn.Conv2d(16, 32, 3, groups=2), 0.75)


def test_wrong_inputs_give_clear_errors():
    layer = RBGPLinear(64, 32, 0.75)
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 64\).*got shape \(2, 65\)"):
        layer(torch.randn(2, 65))
    conv = RBGPConv2d(16, 32, 3, sparsity=0.75)
    with pytest.raises(ValueError, match=r"\(N, 16, H, W\)"):
        conv(torch.randn(2, 15, 8, 8))
    with pytest.raises(ValueError, match="sparsity"):
        RBGPLinear(64, 32, 1.2)
    with pytest.raises(ValueError, match="no grouped"):
        RBGPLinear(64, 32, 0.75, pattern="unstructured")
    with pytest.raises(ValueError, match="cannot make a 7x5"):
        RBGPLinear(5, 7, 0.9)


@pytest.mark.parametrize("cls,args", [(MaskedLinear, (64, 32)), (MaskedConv2d, (8, 16, 3))])
@pytest.mark.parametrize("pattern", ["unstructured", "block", "hbsnn", "nm"])
def test_masked_layers_stay_exact_after_steps(cls, args, pattern):
    kw = {"block": (8, 8)} if pattern == "block" else {}
    from rbgp.patterns import get_pattern
    if pattern == "hbsnn":
        kw = {"block": (8, 8), "sub_block": (2, 2)}
    sparsity = 0.5 if pattern == "nm" else 0.75
    layer = cls(*args, sparsity=sparsity, pattern=get_pattern(pattern, **kw))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 64) if cls is MaskedLinear else torch.randn(2, 8, 6, 6)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    assert torch.all(layer.dense_weight()[~layer.mask] == 0)


def _conv_path(layer, x, monkeypatch) -> str:
    """Which compute path an RBGPConv2d's forward takes on x, seen by spying on the four it can call."""
    import rbgp.ops.conv as layers

    seen = []

    def spy(name, fn):
        def call(*args, **kwargs):
            seen.append(f"channel-merge{args[10]}" if name == "channel" else name)
            return fn(*args, **kwargs)
        return call

    with monkeypatch.context() as m:
        m.setattr(layers, "channel_grouped_conv2d", spy("channel", layers.channel_grouped_conv2d))
        m.setattr(layers, "rbgp_linear", spy("im2col", layers.rbgp_linear))
        m.setattr(layers, "pointwise_conv2d", spy("pointwise", layers.pointwise_conv2d))
        m.setattr(layers.F, "conv2d", spy("masked-dense", layers.F.conv2d))
        layer(x)
    return seen[0]


def _block_conv(*args, **kw):
    return RBGPConv2d(*args, pattern=RBGP4(conv_block="block"), **kw)


LAYERS = {  # name: (make, input shape after the batch dim, compute path for RBGP convs)
    "linear": (lambda: RBGPLinear(64, 64, 0.75), (64,), None),
    "linear-3d": (lambda: RBGPLinear(96, 40, 0.5), (5, 96), None),
    "linear-reference": (lambda: RBGPLinear(64, 32, 0.75, backend="reference"), (64,), None),
    "conv-masked-dense": (lambda: RBGPConv2d(16, 32, 3, padding=1, sparsity=0.75), (16, 6, 6), "masked-dense"),
    "conv-channel": (lambda: RBGPConv2d(6, 32, 3, padding=1, sparsity=0.5), (6, 6, 6), "channel-merge1"),
    "conv-channel-merged": (lambda: RBGPConv2d(128, 128, 3, padding=1, sparsity=0.9), (128, 4, 4), "channel-merge2"),
    "conv-im2col": (lambda: _block_conv(16, 64, 3, stride=2, padding=1, sparsity=0.75), (16, 7, 7), "im2col"),
    "conv-1x1": (lambda: RBGPConv2d(32, 64, 1, sparsity=0.875), (32, 5, 5), "pointwise"),
    "conv-1x1-stride": (lambda: RBGPConv2d(64, 128, 1, stride=(2, 3), sparsity=0.875), (64, 7, 8), "im2col"),
    "conv-1x1-padded": (lambda: RBGPConv2d(64, 128, 1, padding=1, sparsity=0.875), (64, 5, 5), "im2col"),
    "conv-1x1-small-groups": (lambda: RBGPConv2d(32, 32, 1, sparsity=0.875, pattern=RBGP4(group_rows=2)), (32, 5, 5),
                              "masked-dense"),
    "conv-1x1-quarter-dense": (lambda: RBGPConv2d(32, 64, 1, sparsity=0.75), (32, 5, 5), "masked-dense"),
    "conv-reference": (lambda: RBGPConv2d(16, 32, 3, sparsity=0.75, backend="reference"), (16, 6, 6), "im2col"),
    "conv-reflect": (lambda: RBGPConv2d(6, 32, 3, padding=(1, 2), dilation=2, sparsity=0.5, padding_mode="reflect"),
                     (6, 7, 8), "channel-merge1"),
    "masked-linear": (lambda: MaskedLinear(64, 32, 0.75), (64,), None),
    "masked-conv": (lambda: MaskedConv2d(8, 16, 3, stride=2, padding=1, sparsity=0.75), (8, 7, 7), None),
}


def _dense_twin(layer) -> nn.Module:
    """The dense nn.Linear / nn.Conv2d with the layer's masked weight and bias."""
    if isinstance(layer, (RBGPLinear, MaskedLinear)):
        dense = nn.Linear(layer.in_features, layer.out_features)
    else:
        dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, padding_mode=layer.padding_mode)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    return dense


@pytest.mark.parametrize("batch", [0, 3])
@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_and_backward_match_the_dense_layer_empty_batches_included(name, batch, monkeypatch):
    torch.manual_seed(0)
    make, shape, path = LAYERS[name]
    layer = make()
    dense = _dense_twin(layer)
    x = torch.randn(batch, *shape)
    if path is not None:
        assert _conv_path(layer, x, monkeypatch) == path
    xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yd = layer(xs), dense(xd)
    assert y.shape == yd.shape and y.shape[0] == batch
    torch.testing.assert_close(y, yd, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(yd)
    y.backward(g)
    yd.backward(g)
    torch.testing.assert_close(xs.grad, xd.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, atol=1e-4, rtol=1e-4)
    if isinstance(layer, (RBGPLinear, RBGPConv2d)):
        from rbgp.ops import grouped_values

        expected = grouped_values(dense.weight.grad.reshape(layer.structure.shape), layer.layout)
        torch.testing.assert_close(layer.values.grad, expected, atol=1e-3, rtol=1e-4)
    else:
        torch.testing.assert_close(layer.weight.grad, dense.weight.grad * layer.mask, atol=1e-4, rtol=1e-4)
    if batch == 0:
        assert not (layer.values.grad if hasattr(layer, "values") else layer.weight.grad).any()


@pytest.mark.parametrize("kernel,sparsity", [(3, 0.9), (1, 0.9), (3, 0.5)])
def test_conv_dispatch_is_planned_once(kernel, sparsity, monkeypatch):
    """The conv path is a static fact of the layer: its forward re-derives nothing."""
    import rbgp.ops.conv as conv

    layer = RBGPConv2d(32, 64, kernel, padding=kernel // 2, sparsity=sparsity)
    x = torch.randn(2, 32, 8, 8)
    expected = layer(x)

    def refuse(*args, **kwargs):
        raise AssertionError("a dispatch rule ran in the forward")

    for name in ("conv_merge", "pointwise_runs_dense", "im2col_runs_dense", "plan_conv", "channel_table"):
        monkeypatch.setattr(conv, name, refuse, raising=False)
    torch.testing.assert_close(layer(x), expected)
    assert isinstance(layer.conv_args, conv.ConvArgs)


def test_dropout_lands_as_in_the_densified_model():
    """Train-mode runs reproduce their dense twin under one seed: the sparse layers' outputs have the
    dense layers' memory layout, so dropout draws its mask over the same elements."""
    import rbgp

    torch.manual_seed(0)
    model = nn.Sequential(RBGPLinear(64, 128, 0.75), nn.Dropout(0.5), RBGPLinear(128, 96, 0.75), nn.Dropout(0.3))
    dense = rbgp.densify(model, inplace=False)
    x = torch.randn(37, 64)
    for batch in (x, x[:5], x.view(37, 1, 64)):
        torch.manual_seed(1)
        got = model(batch)
        torch.manual_seed(1)
        torch.testing.assert_close(got, dense(batch), rtol=1e-5, atol=1e-5)
