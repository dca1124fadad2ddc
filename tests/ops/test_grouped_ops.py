"""The grouped torch path against the dense masked reference: forward, grad-input, grad-weight."""

import pytest
import torch

from rbgp.ops import LayoutTensors, SparseWeight, dense_weight, grouped_values, rbgp_linear, reference_linear
from rbgp.patterns import RBGP4, GroupedLayout

# error of the path vs an fp64 reference, relative to the output scale
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _layout(out, inp, sparsity, seed=0, **kw):
    return LayoutTensors.from_layout(RBGP4(**kw).build((out, inp), sparsity, seed).layout)


def _check(dtype, out, inp, batch, sparsity, feature_major=False, layout=None, **kw):
    torch.manual_seed(0)
    layout = _layout(out, inp, sparsity, **kw) if layout is None else layout
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
    y = rbgp_linear(xt.t().contiguous().t() if feature_major else xt, SparseWeight(vt, layout), backend="grouped")
    assert y.is_contiguous()  # as nn.Linear's output
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
    y = rbgp_linear(x, SparseWeight(values, layout), bias)
    ref = reference_linear(x.reshape(6, 64), values, layout, bias).reshape(2, 3, 32)
    assert torch.allclose(y, ref, atol=1e-5)


def test_bad_input_rejected():
    layout = _layout(32, 64, 0.75, group_rows=8)
    values = torch.randn(layout.values_shape)
    with pytest.raises(ValueError, match="63 features"):
        rbgp_linear(torch.randn(4, 63), SparseWeight(values, layout))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        rbgp_linear(torch.randn(4, 64), SparseWeight(values, layout), backend="fast")
    with pytest.raises(ValueError, match="dtype"):
        rbgp_linear(torch.randn(4, 64, dtype=torch.float64), SparseWeight(values, layout))


def test_autocast_bf16_keeps_fp32_master_weights():
    layout = _layout(64, 64, 0.75, group_rows=8)
    values = torch.randn(layout.values_shape, requires_grad=True)
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rbgp_linear(x, SparseWeight(values, layout))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert values.grad.dtype == torch.float32


def test_layout_requires_every_row_once():
    import numpy as np
    with pytest.raises(ValueError, match="every output row"):
        GroupedLayout(4, 4, np.array([[0, 1], [1, 2]]), np.array([[0], [1]]))


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_skips_autograd_and_matches_reference(dtype, feature_major):
    """Without a gradient to compute, the forward runs bare (no autograd node) and gives the same values."""
    torch.manual_seed(0)
    layout = _layout(56, 96, 0.75, block=(1, 8), group_rows=8)
    values = torch.randn(layout.values_shape, dtype=torch.float64)
    x = torch.randn(9, 96, dtype=torch.float64)
    ref = reference_linear(x, values, layout)
    xt, vt = x.to(dtype), values.to(dtype).requires_grad_()
    xt = xt.t().contiguous().t() if feature_major else xt
    with torch.no_grad():
        y = rbgp_linear(xt, SparseWeight(vt, layout), backend="grouped")
    assert y.grad_fn is None
    assert (y.double() - ref).abs().max().item() <= TOL[dtype] * ref.abs().max().item()
    y_grad = rbgp_linear(xt, SparseWeight(vt, layout), backend="grouped")  # values need a gradient: the autograd path
    # fp32 without a gradient runs on the native kernel where available: the same values up to rounding
    tol = TOL[dtype] * ref.abs().max().item()
    assert y_grad.grad_fn is not None and (y_grad.detach() - y).abs().max().item() <= tol
    y_plain = rbgp_linear(xt, SparseWeight(vt.detach(), layout), backend="grouped")  # nothing needs a gradient
    assert y_plain.grad_fn is None and torch.equal(y_plain, y)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_gather_rows_is_index_select(dtype, index_dtype):
    from rbgp.ops.grouped import gather_rows

    table = torch.randn(50, 16).to(dtype)
    table[3, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    index = torch.tensor([3, 0, 49, 3, 17, 17], dtype=index_dtype)
    got = gather_rows(table, index)
    assert got.dtype == dtype and got.shape == (6, 16)
    assert torch.equal(got.nan_to_num(0.0), table.index_select(0, index).nan_to_num(0.0))
    assert got[0, 0].isnan() and got[3, 0].isnan()
    assert gather_rows(table, index[:0]).shape == (0, 16)


@pytest.mark.parametrize("feature_major", [False, True])
def test_rows_in_any_order(feature_major):
    """RBGP4 plans put group g's row r at g + r * G, a conv's rows run group by group: the outputs are
    then written through a view of row order; any other row order takes the gather back into it."""
    planned = _layout(56, 96, 0.75, block=(1, 8), group_rows=8)
    g, r = planned.row_index.shape
    assert planned.row_strides == (1, g)
    in_order = LayoutTensors.from_indices(torch.arange(g * r).view(g, r), planned.col_index, 96)
    assert in_order.row_strides == (r, 1)
    perm = torch.randperm(56, generator=torch.Generator().manual_seed(1))
    shuffled = LayoutTensors.from_indices(perm[planned.row_index], planned.col_index, 96)
    assert shuffled.row_strides is None
    for layout in (planned, in_order, shuffled):
        _check(torch.float32, 56, 96, 9, 0.75, feature_major, layout=layout)


def test_block_index_kept_in_the_layouts_workspace():
    from rbgp.ops.grouped import _block_index

    blocks = torch.tensor([[0, 2], [1, 2], [0, 3]])
    cols = (blocks[:, :, None] * 4 + torch.arange(4)).reshape(3, 8)  # micro-blocks of 4 columns
    layout = LayoutTensors.from_indices(torch.arange(3)[:, None], cols, 16)
    assert layout.block_width == 4
    cpu = torch.device("cpu")
    first = _block_index(layout, slice(0, 3), 2, 4, cpu)
    assert first.tolist() == [0, 2, 1, 2, 0, 3, 4, 6, 5, 6, 4, 7]
    assert _block_index(layout, slice(0, 3), 2, 4, cpu) is first  # kept
    assert _block_index(layout, slice(0, 3), 3, 4, cpu) is not first  # another batch size: rebuilt
    assert _block_index(layout, slice(1, 2), 2, 4, cpu).tolist() == [1, 2, 5, 6]
    other = layout._replace(workspace=None)  # no workspace: built on every call
    assert _block_index(other, slice(0, 3), 2, 4, cpu) is not _block_index(other, slice(0, 3), 2, 4, cpu)


@pytest.mark.parametrize("name", ["autocast", "channel_conv", "conv", "dispatch", "finite", "grouped", "im2col", "layout",
                                  "pointwise_conv", "reference", "weight", "workspace"])
def test_no_module_level_state(name):
    """Kept tables live in a weight's workspace, never in a module global (mutable containers)."""
    import importlib

    from torch.utils.weak import WeakIdKeyDictionary

    module = importlib.import_module(f"rbgp.ops.{name}")
    mutable = (dict, list, set, WeakIdKeyDictionary)
    assert not [k for k, v in vars(module).items() if isinstance(v, mutable) and not k.startswith("__")]


def test_inference_mode_then_training():
    """Layouts made or used under torch.inference_mode (whose tensors carry no version counter) keep
    working, and what was kept during inference serves the training steps after it."""
    with torch.inference_mode():
        made_inside = _layout(64, 128, 0.75)
        values = torch.randn(made_inside.values_shape)
        assert rbgp_linear(torch.randn(4, 128), SparseWeight(values, made_inside)).shape == (4, 64)
    layout = _layout(64, 128, 0.75)
    values = torch.randn(layout.values_shape, requires_grad=True)
    x = torch.randn(4, 128, requires_grad=True)
    with torch.inference_mode():
        y_inf = rbgp_linear(x, SparseWeight(values, layout))
    y = rbgp_linear(x, SparseWeight(values, layout))
    y.sum().backward()
    assert torch.allclose(y.detach(), y_inf, atol=1e-6)
    assert torch.allclose(y.detach(), reference_linear(x.detach(), values.detach(), layout), atol=1e-5)
    assert x.grad is not None and values.grad is not None


@pytest.mark.parametrize("rows,cols,message", [
    ([[0, 1], [1, 3]], [[0, 1], [2, 3]], "every row id 0..3 exactly once"),  # row 1 twice: a kernel would write it twice
    ([[0, -1], [2, 3]], [[0, 1], [2, 3]], "every row id"),  # a negative id: an out-of-bounds write in C
    ([[0, 1], [2, 3]], [[1, 1], [2, 3]], "strictly increasing"),  # a column read twice
    ([[0, 1], [2, 3]], [[3, 1], [2, 3]], "strictly increasing"),
    ([[0, 1], [2, 3]], [[0, 1], [2, 9]], "outside \\[0, 8\\)"),
])
def test_bad_index_tables_are_refused_where_they_are_built(rows, cols, message):
    with pytest.raises(ValueError, match=message):
        LayoutTensors.from_indices(torch.tensor(rows), torch.tensor(cols), 8)
