"""RBGP convs (im2col + grouped path) against F.conv2d with the masked dense weight, both gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rbgp.nn import RBGPConv2d
from rbgp.ops import grouped_values

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cin,cout,k,s,p,d,hw,batch", [
    (16, 32, (3, 3), (1, 1), (1, 1), (1, 1), (8, 8), 2),
    (16, 32, (3, 2), (2, 1), (0, 1), (1, 2), (11, 9), 3),
    (32, 16, (1, 1), (1, 1), (0, 0), (1, 1), (5, 7), 1),
    (16, 16, (5, 5), (3, 2), (2, 2), (1, 1), (13, 6), 2),
])
def test_grouped_conv_matches_dense(dtype, cin, cout, k, s, p, d, hw, batch):
    torch.manual_seed(0)
    layer = RBGPConv2d(cin, cout, k, s, p, d, sparsity=0.75, backend="grouped").double()
    x = torch.randn(batch, cin, *hw, dtype=torch.float64)
    w = layer.dense_weight().detach().requires_grad_()
    xr = x.clone().requires_grad_()
    ref = F.conv2d(xr, w, layer.bias, s, p, d)
    gy = torch.randn_like(ref)
    ref.backward(gy)
    low = copy.deepcopy(layer).to(dtype)
    xt = x.to(dtype).requires_grad_()
    y = low(xt)
    y.backward(gy.to(dtype))
    dv_ref = grouped_values(w.grad.reshape(cout, -1), layer.layout)
    for got, want in ((y, ref), (xt.grad, xr.grad), (low.values.grad, dv_ref)):
        err = (got.double() - want).abs().max().item()
        assert err <= TOL[dtype] * want.abs().max().item() + 1e-12, (dtype, err)


CONV_PATHS = {  # (in, out, kernel, stride, padding, padding_mode, backend)
    "channels 3x3": (32, 64, 3, 1, 1, "zeros", "auto"),
    "pointwise 1x1": (64, 64, 1, 1, 0, "zeros", "auto"),
    "1x1 stride 2": (64, 64, 1, 2, 0, "zeros", "auto"),
    "im2col reflect": (32, 64, 3, 2, 2, "reflect", "auto"),
    "reference": (32, 48, 3, 1, 1, "zeros", "reference"),
    "small, masked dense": (8, 8, 3, 1, 1, "zeros", "auto"),
}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("path", list(CONV_PATHS))
def test_output_as_nn_conv2d_gives_it(path, channels_last):
    """Contiguous in the input's memory format, and NaN wherever the dense conv's window reads an inf
    or NaN input (the densified weight's zeros times inf or NaN)."""
    cin, cout, k, s, p, mode, backend = CONV_PATHS[path]
    torch.manual_seed(0)
    layer = RBGPConv2d(cin, cout, k, s, p, sparsity=0.75, padding_mode=mode, backend=backend)
    dense = torch.nn.Conv2d(cin, cout, k, s, p, padding_mode=mode)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(layer.bias)
    x = torch.randn(3, cin, 9, 9)
    x[0, 1, 4, 4] = float("nan")
    x[2, 0, 0, 8] = float("-inf")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y, want = layer(x), dense(x)
        assert y.is_contiguous(memory_format=fmt), (path, y.stride())
        assert torch.equal(torch.isfinite(y), torch.isfinite(want)), path
        finite = torch.isfinite(want)
        torch.testing.assert_close(y[finite], want[finite], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(y[1]).all()
