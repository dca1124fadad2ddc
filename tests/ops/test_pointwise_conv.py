"""The 1x1 conv path (chunked grouped matmuls on NCHW) against F.conv2d with the masked dense weight:
forward and the three gradients, odd shapes, padding rows, rows already in order, chunks
that do not divide the batch, dtypes, autocast."""

import pytest
import torch
import torch.nn.functional as F

import rbgp.ops.pointwise_conv as pointwise
from rbgp.nn import RBGPConv2d
from rbgp.patterns import RBGP4

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _check(tk, layer: RBGPConv2d, x: torch.Tensor, dtype: torch.dtype) -> None:
    """The layer (float64 weights) in `dtype` on x against the dense conv in float64, with its gradients."""
    dense = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 1, bias=layer.bias is not None).double()
    y, ref = tk.check_conv_against_dense(layer, dense, x, dtype, TOL[dtype])
    assert y.dtype == dtype and y.shape == ref.shape and y.is_contiguous()


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("cin,cout,hw,sparsity,pattern,chunk", [
    (32, 64, (5, 5), 0.875, None, None),
    (64, 100, (9, 7), 0.75, RBGP4(min_group_rows=8), None),  # 13 groups of 8 rows: 4 padding rows
    (64, 256, (3, 4), 0.9375, None, 80000),  # chunks of 2 samples, the last one short
    (48, 40, (3, 5), 0.75, RBGP4(group_rows=1), 1),  # one row per group: rows in order, one sample a chunk
])
def test_pointwise_path_matches_dense(tk, dtype, cin, cout, hw, sparsity, pattern, chunk, monkeypatch):
    torch.manual_seed(0)
    if chunk is not None:
        monkeypatch.setattr(pointwise, "CHUNK_BYTES", chunk)
    layer = RBGPConv2d(cin, cout, 1, sparsity=sparsity, pattern=pattern, backend="grouped").double()
    assert pattern is None or pattern.group_rows != 1 or layer.conv_args.rows_in_order
    if cout == 100:
        assert layer.structure.layout.padded_rows == 4
    _check(tk, layer, torch.randn(5, cin, *hw, dtype=torch.float64), dtype)


def test_pointwise_path_without_bias_and_on_an_empty_batch(tk):
    torch.manual_seed(0)
    layer = RBGPConv2d(32, 64, 1, sparsity=0.875, bias=False).double()
    _check(tk, layer, torch.randn(3, 32, 4, 6, dtype=torch.float64), torch.float64)
    x = torch.randn(0, 32, 4, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 64, 4, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape and not layer.values.grad.any()


def test_pointwise_path_takes_channels_last_and_non_contiguous_inputs():
    torch.manual_seed(0)
    layer = RBGPConv2d(32, 64, 1, sparsity=0.875)
    x = torch.randn(2, 32, 9, 10)
    want = F.conv2d(x, layer.dense_weight(), layer.bias)
    for variant in (x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        torch.testing.assert_close(layer(variant), want, atol=1e-5, rtol=1e-5)


def test_pointwise_path_under_cpu_autocast():
    torch.manual_seed(0)
    layer = RBGPConv2d(32, 64, 1, sparsity=0.875)
    x = torch.randn(2, 32, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    want = F.conv2d(x, layer.dense_weight(), layer.bias)
    torch.testing.assert_close(y.float(), want, atol=5e-2, rtol=5e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.values.grad.dtype == torch.float32


def test_pointwise_path_refuses_mixed_dtypes_without_autocast():
    layer = RBGPConv2d(32, 64, 1, sparsity=0.875)
    with pytest.raises(ValueError, match="differs from the weight dtype"):
        layer(torch.randn(1, 32, 3, 3, dtype=torch.float64))


def test_samples_per_chunk(monkeypatch):
    monkeypatch.setattr(pointwise, "CHUNK_BYTES", 2 << 20)
    assert pointwise.samples_per_chunk(32, 1 << 20) == 2
    assert pointwise.samples_per_chunk(32, 8 << 20) == 1  # at least one sample
    assert pointwise.samples_per_chunk(3, 1) == 3  # at most the batch
