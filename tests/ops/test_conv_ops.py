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
