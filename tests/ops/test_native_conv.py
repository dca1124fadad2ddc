"""The native conv (`native.grouped_conv`: wide tiles on the padded input's windows) against the dense conv
of the densified weight, and its dispatch from `RBGPConv2d`."""

import pytest
import torch
import torch.nn.functional as F

from rbgp.nn import RBGPConv2d, sparsify
from rbgp.ops import conv, native

pytestmark = pytest.mark.skipif(
    not native.available() or native.isa() != "avx2", reason="the native conv needs the kernel's AVX2 build"
)

TOL = 1e-5  # relative to max |y|: fp32 sums of up to a few thousand products


@pytest.fixture(params=[(4, 256), (8, 256), (8, 512)], ids=["4rows", "8rows", "8rows-512bit"])
def tile_rows(request):
    """Runs a test with 4-row tiles and, where the CPU has AVX-512VL, 8-row ones of 256- and 512-bit vectors."""
    rows, bits = request.param
    default, default_bits = native.wide_rows(), native.vector_bits()
    if native.wide_rows(rows) != rows or native.vector_bits(bits) != bits:
        native.wide_rows(default), native.vector_bits(default_bits)
        pytest.skip("this CPU has no AVX-512VL")
    yield rows
    native.wide_rows(default), native.vector_bits(default_bits)


@pytest.fixture
def calls(monkeypatch):
    """The number of native conv calls so far (a list, one entry per call)."""
    seen: list[int] = []
    run = native.grouped_conv
    monkeypatch.setattr(native, "grouped_conv", lambda *a, **k: (seen.append(1), run(*a, **k))[1])
    return seen


def _dense_conv(layer: RBGPConv2d, x: torch.Tensor) -> torch.Tensor:
    weight = layer.sparse_weight.dense().view(layer.out_channels, -1, *layer.kernel_size)
    pad = layer.conv_args.pad
    return F.conv2d(F.pad(x, pad), weight, layer.bias, layer.stride, 0, layer.dilation)


def _close(y: torch.Tensor, ref: torch.Tensor, memory_format=torch.contiguous_format) -> None:
    assert y.shape == ref.shape and y.is_contiguous(memory_format=memory_format)  # as nn.Conv2d's output
    scale = ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(y / scale, ref / scale, atol=TOL, rtol=0, equal_nan=True)


@pytest.mark.parametrize(
    "cin,cout,kernel,stride,padding,dilation,hw,batch,sparsity",
    [
        (64, 64, 3, 1, 1, 1, (32, 32), 2, 0.75),  # a row in two runs of 16
        (32, 64, 3, 1, 1, 1, (9, 13), 3, 0.75),  # 13-pixel rows: one run of two vectors, 3 lanes idle
        (128, 128, 3, 1, 1, 1, (7, 29), 1, 0.875),  # runs of 16 and 13
        (64, 64, 3, 1, 2, 2, (10, 50), 2, 0.75),  # dilation; 50-pixel rows: runs of 24, 24 and 2
        (32, 64, 5, 1, 0, 1, (12, 12), 5, 0.75),  # 5x5 taps, no padding: 8-pixel rows
        (48, 64, (3, 1), (2, 1), (1, 0), 1, (11, 24), 3, 0.75),  # rectangular kernel, stride 2 down
        (64, 96, (1, 3), 1, (0, 1), 1, (5, 17), 4, 0.75),
        (64, 128, 3, 2, 1, 1, (32, 32), 2, 0.75),  # stride 2: columns stored as two phases
        (64, 64, 3, (1, 2), 1, 1, (7, 35), 3, 0.75),  # odd width, stride along the width only
        (64, 64, 3, 3, 2, 2, (20, 51), 2, 0.75),  # stride 3 with dilation 2: taps land on every phase
        (64, 64, 3, 1, 1, 1, (10, 8), 3, 0.75),  # 8-pixel rows stacked three to a run: 3 + 3 + 3 + 1
        (64, 128, 3, 2, 1, 1, (16, 15), 2, 0.75),  # stride 2 to 8x8: stacked rows two input rows apart
    ],
)
def test_matches_the_dense_conv(cin, cout, kernel, stride, padding, dilation, hw, batch, sparsity, tile_rows, calls):
    torch.manual_seed(0)
    layer = RBGPConv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, sparsity=sparsity)
    x = torch.randn(batch, cin, *hw)
    with torch.no_grad():
        y = layer(x)
        _close(y, _dense_conv(layer, x))
        assert calls, "the native conv did not run"
        x2 = torch.randn(batch, cin, *hw) * 3  # the kept padded input: borders still zero, interior new
        _close(layer(x2), _dense_conv(layer, x2))
    assert "padded input" in layer._workspace._slots


@pytest.mark.parametrize("rows", [7, 3, 12])
def test_any_tables_against_the_densified_weight(rows, tile_rows):
    """Random channel sets, row groups of 7, 3 or 12 rows (every tile height), output channels in random
    order with padding rows dropped, a bias: against the dense conv of the weight the tables describe."""
    g = torch.Generator().manual_seed(rows)
    groups, channels, taps, cin, out = 5, 6, 9, 20, 5 * rows - 2
    blocks = torch.stack([torch.randperm(cin, generator=g)[:channels] for _ in range(groups)])
    order = torch.randperm(groups * rows, generator=g)  # group-major row -> output channel (>= out: padding)
    values = torch.randn(groups, rows, channels * taps, generator=g)
    bias = torch.randn(out, generator=g)
    weight = torch.zeros(out, cin * taps)
    for gi in range(groups):
        for t in range(rows):
            if order[gi * rows + t] < out:
                for b in range(channels):
                    c = blocks[gi, b]
                    weight[order[gi * rows + t], c * taps : (c + 1) * taps] = values[gi, t, b * taps : (b + 1) * taps]
    for width in (27, 8, 5):  # rows in runs; rows of one vector, stacked; shorter, stacked with idle lanes
        x = torch.randn(3, cin, 7, width, generator=g)
        y = native.grouped_conv(x, values, blocks, order.view(groups, rows), out, (3, 3), (1, 1), (1, 1), (1, 1), bias)
        _close(y, F.conv2d(x, weight.view(out, cin, 3, 3), bias, 1, 1))


def test_converted_layouts_and_flags(calls):
    """A conv converted with calibration data (its own channel sets and row order), inf and NaN inputs
    flagged over their windows as the dense conv does, a channels-last input."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3, padding=1))
    dense = torch.nn.Conv2d(32, 64, 3, padding=1)
    dense.load_state_dict(model[0].state_dict())
    sparsify(model, 0.75, calibration=[torch.randn(8, 32, 12, 12)])
    layer = model[0]
    x = torch.randn(3, 32, 12, 20)
    x[0, 5, 3, 4], x[2, 31, 11, 19] = float("nan"), float("inf")
    with torch.no_grad():
        y = layer(x)
        _close(y, _dense_conv(layer, x))
        assert torch.equal(y.isnan(), _dense_conv(layer, x).isnan()) and y.isnan().any()
        last = torch.channels_last
        _close(layer(x.contiguous(memory_format=last)), _dense_conv(layer, x), memory_format=last)
    assert calls


def test_other_paths_where_the_native_conv_does_not_apply(calls):
    """Narrow output rows (also after a stride), a call that builds a graph: the other paths run, with
    the same results."""
    torch.manual_seed(0)
    layer = RBGPConv2d(32, 64, 3, padding=1, sparsity=0.75)
    strided = RBGPConv2d(32, 64, 3, stride=2, padding=1, sparsity=0.75)
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        narrow = torch.randn(2, 32, 16, conv.NATIVE_MIN_WIDTH - 1)
        _close(layer(narrow), _dense_conv(layer, narrow))
        _close(strided(x), _dense_conv(strided, x))  # 8 output columns from 16 at stride 2: native
        assert len(calls) == 1
        halved = torch.randn(2, 32, 16, 2 * conv.NATIVE_MIN_WIDTH - 2)
        _close(strided(halved), _dense_conv(strided, halved))
    calls.clear()
    y = layer(x)  # with gradient
    y.sum().backward()
    assert layer.values.grad is not None
    assert not calls
    with torch.no_grad():
        _close(y.detach(), layer(x))
    assert len(calls) == 1


def test_bad_inputs_and_empty_batches():
    torch.manual_seed(0)
    layer = RBGPConv2d(16, 32, 3, padding=1, sparsity=0.75)
    w = layer.sparse_weight
    blocks = w.channels[:, : w.values.shape[2] // 9].to(torch.int64).contiguous()
    rows = w.layout.row_index.to(torch.int64).contiguous()
    x = torch.randn(2, 16, 8, 8)
    args = (rows, 32, (3, 3))
    with pytest.raises(ValueError, match="at most 16 taps along the width"):
        v = torch.zeros(w.values.shape[0], w.values.shape[1], blocks.shape[1] * 17)
        native.grouped_conv(x, v, blocks, rows, 32, (1, 17), (1, 1), (0, 8), (1, 1))
    with pytest.raises(ValueError, match="too small"):
        native.grouped_conv(x[:, :, :2], w.values.detach(), blocks, *args, (1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="torch.bfloat16"):
        native.grouped_conv(x, w.values.detach().bfloat16(), blocks, *args, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="channels of 3x3 taps"):
        native.grouped_conv(x, w.values.detach(), blocks[:, :-1], *args, (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"input channels in \[0, 16\), got \d+\.\.16"):
        native.grouped_conv(x, w.values.detach(), blocks.clamp(max=15).index_fill(1, torch.tensor([0]), 16), *args,
                            (1, 1), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="rows int64"):
        native.grouped_conv(x, w.values.detach(), blocks, rows.int(), 32, (3, 3), (1, 1), (1, 1), (1, 1))
    empty = native.grouped_conv(x[:0], w.values.detach(), blocks, *args, (1, 1), (1, 1), (1, 1))
    assert empty.shape == (0, 32, 8, 8)
