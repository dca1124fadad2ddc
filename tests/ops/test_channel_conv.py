"""The channel-granular conv path (gathered channels + grouped conv) against F.conv2d with the masked dense
weight: forward and the three gradients, odd shapes, padding rows, padding modes, dtypes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rbgp.nn import RBGPConv2d
from rbgp.ops import channel_conv, conv
from rbgp.ops.channel_conv import channel_table
from rbgp.patterns import RBGP4

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("cin,cout,k,s,p,d,mode,hw,sparsity", [
    (16, 32, 3, 1, 1, 1, "zeros", (8, 8), 0.75),
    (24, 100, 3, 2, 1, 1, "zeros", (9, 7), 0.875),
    (64, 100, 3, 1, 1, 1, "zeros", (5, 6), 0.75),  # 13 groups of 8 rows: 4 padding rows complete the last
    (32, 48, (3, 1), 1, (1, 0), 1, "reflect", (6, 5), 0.75),
    (16, 32, 5, 1, "same", 2, "circular", (11, 9), 0.75),
])
def test_channel_path_matches_dense(tk, dtype, cin, cout, k, s, p, d, mode, hw, sparsity):
    torch.manual_seed(0)
    pattern = RBGP4(min_group_rows=8) if cout == 100 and cin == 64 else None
    layer = RBGPConv2d(cin, cout, k, s, p, d, sparsity=sparsity, padding_mode=mode, pattern=pattern).double()
    assert layer.channels is not None  # whole input channels per group: the grouped-conv path runs
    assert pattern is None or layer.structure.layout.padded_rows == 4
    dense = torch.nn.Conv2d(cin, cout, k, s, p, d, padding_mode=mode).double()
    tk.check_conv_against_dense(layer, dense, torch.randn(2, cin, *hw, dtype=torch.float64), dtype, TOL[dtype])


def test_block_layouts_keep_the_im2col_path_and_agree():
    torch.manual_seed(0)
    chan = RBGPConv2d(32, 64, 3, padding=1, sparsity=0.875)
    block = RBGPConv2d(32, 64, 3, padding=1, sparsity=0.875, pattern=RBGP4(conv_block="block"))
    assert chan.channels is not None and block.channels is None
    assert channel_table(block.col_index, 9) is None
    x = torch.randn(2, 32, 6, 6)
    for layer in (chan, block):
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.dense_weight(), layer.bias, padding=1))
        ref = copy.deepcopy(layer)
        ref.backend = "reference"  # the im2col + dense reference path, same layout
        torch.testing.assert_close(ref(x), layer(x))


def test_dtype_mismatch_is_refused():
    layer = RBGPConv2d(16, 32, 3, padding=1, sparsity=0.75)
    with pytest.raises(ValueError, match="differs from the weight dtype"):
        layer(torch.randn(1, 16, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("cin,cout,sparsity,merge", [
    (64, 64, 0.9, None),  # 2-row groups, merging 4 would do 0.4 of the dense work: the masked dense conv
    (128, 128, 0.95, 4),  # 2-row groups merged by 4 (0.2 of the dense work)
    (128, 128, 0.9, 2),  # 4-row groups merged by 2
    (128, 256, 0.75, 1),  # 16-row groups: as they are
])
def test_small_groups_merge_or_run_dense(cin, cout, sparsity, merge):
    from rbgp.ops.conv import conv_merge

    torch.manual_seed(0)
    layer = RBGPConv2d(cin, cout, 3, padding=1, sparsity=sparsity)
    g, r, _ = layer.values.shape
    assert layer.channels is not None and conv_merge(g, r, layer.density) == merge
    x = torch.randn(2, cin, 6, 6, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, F.conv2d(x, layer.dense_weight(), layer.bias, padding=1), rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    grads = layer.values.grad.clone(), x.grad.clone()
    ref = copy.deepcopy(layer)
    ref.backend = "reference"
    xr = x.detach().requires_grad_()
    ref.values.grad = None
    ref(xr).square().sum().backward()
    torch.testing.assert_close(grads[0], ref.values.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], xr.grad, rtol=1e-4, atol=1e-4)


def test_merged_weight_is_block_diagonal():
    from rbgp.ops.channel_conv import merged_weight

    values = torch.arange(1.0, 1 + 4 * 2 * 3).reshape(4, 2, 3)
    w = merged_weight(values, 2)
    assert w.shape == (2, 4, 6)
    torch.testing.assert_close(w[0, :2, :3], values[0])
    torch.testing.assert_close(w[0, 2:, 3:], values[1])
    assert not w[0, :2, 3:].any() and not w[0, 2:, :3].any()


def _matches_dense_and_reference(layer, x):
    """Forward against F.conv2d of the masked weight (padding 1); the values' and input's gradients
    against the same layer on the im2col reference backend."""
    y = layer(x)
    torch.testing.assert_close(y, F.conv2d(x, layer.dense_weight(), layer.bias, padding=1), rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    ref = copy.deepcopy(layer)
    ref.backend = "reference"
    ref.values.grad = None
    xr = x.detach().requires_grad_()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(layer.values.grad, ref.values.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)


def test_channels_per_group_padded_to_a_multiple_of_8():
    from rbgp.ops.channel_conv import CHANNEL_ALIGN, padded_channels

    table = torch.tensor([[3, 5, 7], [0, 1, 2]])
    padded = padded_channels(table, 4)
    assert padded.tolist() == [[3, 5, 7, 3], [0, 1, 2, 0]] and padded_channels(padded, 4) is padded
    torch.manual_seed(0)
    layer = RBGPConv2d(24, 32, 3, padding=1, sparsity=0.75, pattern=RBGP4(group_rows=16))
    cg = layer.values.shape[2] // 9
    assert cg % CHANNEL_ALIGN and layer.channels.shape[1] % CHANNEL_ALIGN == 0  # 6 channels read, 8 gathered
    x = torch.randn(2, 24, 5, 5, requires_grad=True)
    _matches_dense_and_reference(layer, x)


def test_conv_rows_are_labelled_group_by_group():
    """RBGP4 conv masks list each group's rows as consecutive channels (no output reorder), and are the
    paper-order product with its rows relabelled; linear masks keep the paper's order."""
    import numpy as np

    conv = RBGP4().build((64, 32, 3, 3), 0.75, seed=3)
    g, r = conv.layout.row_index.shape
    assert r > 1 and np.array_equal(conv.layout.row_index.ravel(), np.arange(g * r))
    paper = _paper_product(conv, 3)
    relabel = (np.arange(g * r).reshape(r, g).T).ravel()  # paper row g + G*r -> channel g*R + r
    assert np.array_equal(conv.array, paper[relabel]) and not np.array_equal(conv.array, paper)
    linear = RBGP4().build((256, 512), 0.75, seed=3)
    assert np.array_equal(linear.array, _paper_product(linear, 3))


def _paper_product(mask, seed):
    """The biadjacency of the mask's plan in the paper's factor order G_o (x) G_r (x) G_i (x) G_b."""
    from rbgp.graphs import product
    from rbgp.patterns.rbgp4 import RBGP4Plan

    plan = RBGP4Plan(**{k: mask.info["plan"][k] for k in RBGP4Plan.__dataclass_fields__})
    return product(*plan.factors(seed)).biadjacency()


def test_a_fitted_conv_structure_keeps_its_row_order():
    """A magnitude-fitted structure groups rows freely: the channel path then reorders its outputs."""
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    structure = RBGP4(group_rows=8).fit(w.numpy(), tuple(w.shape), 0.75, seed=0)
    layer = RBGPConv2d(32, 64, 3, padding=1, sparsity=0.75, structure=structure)
    assert layer.channels is not None
    assert not torch.equal(layer.row_index.flatten(), torch.arange(64))
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    _matches_dense_and_reference(layer, x)


def test_calls_without_gradient_gather_into_the_kept_buffer(monkeypatch):
    """Inference reuses the layer's gathered-input buffer where the gather is large (same result, no new
    one per call, one per batch shape and mode); calls that build a graph never touch it, so a kept
    buffer never reaches autograd."""
    monkeypatch.setattr(conv, "NATIVE_MIN_WIDTH", 1 << 30)  # the gathered-channel path, not the native conv
    torch.manual_seed(0)
    layer = RBGPConv2d(32, 64, 3, padding=1, sparsity=0.75)
    with torch.no_grad():
        layer(torch.randn(3, 32, 8, 8))
    assert "gathered" not in layer._workspace._slots  # small gathers come from the allocator
    monkeypatch.setattr(channel_conv, "KEPT_GATHER_BYTES", 1)
    assert layer.conv_args.merge == 1  # the gathered-channel path (not the masked dense conv)
    dense = torch.nn.Conv2d(32, 64, 3, padding=1)
    with torch.no_grad():
        dense.weight.copy_(layer.sparse_weight.dense().view_as(dense.weight))
        dense.bias.copy_(layer.bias)
    slots = layer._workspace._slots
    x = torch.randn(3, 32, 8, 8)
    with torch.no_grad():
        y1 = layer(x)
        kept = slots["gathered"][1]
        y2 = layer(x.clone())
        assert slots["gathered"][1] is kept
        torch.testing.assert_close(y1, dense(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y1, y2, atol=0, rtol=0)
        z = layer(torch.randn(5, 32, 8, 8))  # a new batch size: a new buffer, the right output
        assert slots["gathered"][1].shape[0] == 5 and z.shape == (5, 64, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), y1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y1)  # an inference-mode buffer is not written outside it
    del slots["gathered"]
    x.requires_grad_(True)
    layer(x).sum().backward()  # with gradient: a fresh gather, nothing kept
    assert "gathered" not in slots
    torch.testing.assert_close(x.grad, torch.autograd.grad(dense(x).sum(), x)[0], atol=1e-5, rtol=1e-5)


def test_a_layer_busy_in_another_thread_gathers_into_a_fresh_tensor(monkeypatch):
    monkeypatch.setattr(channel_conv, "KEPT_GATHER_BYTES", 1)
    layer = RBGPConv2d(64, 128, 3, padding=1, sparsity=0.9)
    assert layer.conv_args.merge == 2
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        expected = layer(x)
        assert layer._workspace.lock.acquire()  # as if another thread were inside the call
        try:
            layer._workspace._slots.clear()
            torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)
            assert "gathered" not in layer._workspace._slots
        finally:
            layer._workspace.lock.release()
