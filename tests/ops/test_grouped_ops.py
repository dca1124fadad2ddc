"""The grouped torch path against the dense masked reference: forward, grad-input, grad-weight."""

import pytest
import torch

from rbgp.ops import LayoutTensors, dense_weight, grouped_values, rbgp_linear, reference_linear
from rbgp.patterns import RBGP4, GroupedLayout

# error of the path vs an fp64 reference, relative to the output scale
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _layout(out, inp, sparsity, seed=0, **kw):
    return LayoutTensors.from_layout(RBGP4(**kw).build((out, inp), sparsity, seed).layout)


def _check(dtype, out, inp, batch, sparsity, feature_major=False, **kw):
    torch.manual_seed(0)
    layout = _layout(out, inp, sparsity, **kw)
    values = torch.randn(layout.values_shape, dtype=torch.float64)
    x = torch.randn(batch, inp, dtype=torch.float64)
    gy = torch.randn(batch, out, dtype=torch.float64)
    # reference in fp64
    x64, v64 = x.clone().requires_grad_(), values.clone().requires_grad_()
    y_ref = reference_linear(x64, v64, layout)
    y_ref.backward(gy)
    # path under test in dtype
    xt, vt = x.to(dtype).requires_grad_(), values.to(dtype).requires_grad_()
    # a row-major input (micro-blocks gathered as rows when wide enough) or, as another RBGP layer hands
    # it on, the transposed view of a feature-major buffer
    y = rbgp_linear(xt.t().contiguous().t() if feature_major else xt, vt, layout, backend="grouped")
    y.backward(gy.to(dtype))
    for got, ref in ((y, y_ref), (xt.grad, x64.grad), (vt.grad, v64.grad)):
        err = (got.double() - ref).abs().max().item()
        assert err <= TOL[dtype] * ref.abs().max().item() + 1e-12, (dtype, err)


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out,inp,batch,sparsity,kw", [
    (64, 128, 5, 0.75, {}),
    (56, 96, 9, 0.75, {"block": (1, 8), "group_rows": 8}),  # 8-column micro-blocks: gathered as rows
    (96, 48, 7, 0.5, {"block": (1, 4), "group_rows": 8}),
    (48, 80, 3, 0.75, {"block": (2, 4), "group_rows": 4}),
    (256, 256, 33, 0.875, {}),
    (40, 24, 1, 0.5, {"block": (1, 1), "group_rows": 2}),
])
def test_grouped_matches_reference(dtype, out, inp, batch, sparsity, kw, feature_major):
    _check(dtype, out, inp, batch, sparsity, feature_major, **kw)


@pytest.mark.parametrize("feature_major", [False, True])
def test_grouped_matches_reference_in_many_chunks(feature_major, monkeypatch):
    import rbgp.ops.grouped as grouped

    monkeypatch.setattr(grouped, "CHUNK_BYTES", 1)  # one group per chunk, forward and backward
    monkeypatch.setattr(grouped, "ROW_CHUNK_BYTES", 3000)  # the micro-block gather: a few groups per chunk
    _check(torch.float32, 56, 96, 9, 0.75, feature_major, block=(1, 8), group_rows=8)


def test_dense_weight_roundtrip():
    layout = _layout(64, 128, 0.75)
    values = torch.randn(layout.values_shape)
    w = dense_weight(values, layout)
    assert torch.equal(grouped_values(w, layout), values)
    assert (w != 0).sum().item() == values.numel()


def test_leading_dims_and_bias():
    layout = _layout(32, 64, 0.75, group_rows=8)
    values = torch.randn(layout.values_shape)
    bias = torch.randn(32)
    x = torch.randn(2, 3, 64)
    y = rbgp_linear(x, values, layout, bias)
    ref = reference_linear(x.reshape(6, 64), values, layout, bias).reshape(2, 3, 32)
    assert torch.allclose(y, ref, atol=1e-5)


def test_bad_input_rejected():
    layout = _layout(32, 64, 0.75, group_rows=8)
    values = torch.randn(layout.values_shape)
    with pytest.raises(ValueError, match="63 features"):
        rbgp_linear(torch.randn(4, 63), values, layout)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        rbgp_linear(torch.randn(4, 64), values, layout, backend="fast")
    with pytest.raises(ValueError, match="dtype"):
        rbgp_linear(torch.randn(4, 64, dtype=torch.float64), values, layout)


def test_autocast_bf16_keeps_fp32_master_weights():
    layout = _layout(64, 64, 0.75, group_rows=8)
    values = torch.randn(layout.values_shape, requires_grad=True)
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rbgp_linear(x, values, layout)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert values.grad.dtype == torch.float32


def test_layout_requires_every_row_once():
    import numpy as np
    with pytest.raises(ValueError, match="every output row"):
        GroupedLayout(4, 4, np.array([[0, 1], [1, 2]]), np.array([[0], [1]]))
