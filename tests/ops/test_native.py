"""The native small-batch CPU kernel against the fp64 reference, its dispatch, fallback and compile path."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rbgp.ops import LayoutTensors, SparseWeight, native, rbgp_linear, reference_linear
from rbgp.patterns import RBGP4, GroupedLayout

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler to build the native kernel")

# relative to max |y|: fp32 dot products of up to ~500 terms; bf16 and int8 values are exact in fp32
# arithmetic, so the same bound holds against a reference on the rounded values
TOL = 1e-5


def make_layout(out: int, inp: int, sparsity: float, **kw) -> LayoutTensors:
    return LayoutTensors.from_layout(RBGP4(**kw).build((out, inp), sparsity, 0).layout)


def random_group_layout(out: int, inp: int, rows: int, cols: int) -> LayoutTensors:
    """Groups of `rows` rows reading `cols` random (unblocked) columns."""
    rng = np.random.default_rng(0)
    row_index = rng.permutation(out).reshape(out // rows, rows)
    col_index = np.sort(np.stack([rng.choice(inp, cols, replace=False) for _ in range(out // rows)]), axis=1)
    return LayoutTensors.from_layout(GroupedLayout(out, inp, row_index, col_index))


def _check(layout, batch: int, kind: str, seed: int = 0, strided: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(layout.values_shape, generator=g)
    x = torch.randn(batch, layout.in_features, generator=g)
    if strided:
        x = x.t().contiguous().t()  # the transposed view another RBGP layer hands on
    scales = None
    if kind == "bf16":
        values = values.bfloat16()
        exact = values.double()
    elif kind == "int8":
        scales = values.abs().amax(-1) / 127
        values = torch.round(values / scales[..., None]).to(torch.int8)
        exact = values.double() * scales.double()[..., None]
    else:
        exact = values.double()
    y = native.grouped_small(x, values, layout, scales)
    ref = reference_linear(x.double(), exact, layout)
    assert y.shape == (batch, layout.out_features) and y.dtype == torch.float32 and y.is_contiguous()
    if batch:
        assert (y.double() - ref).abs().max().item() <= TOL * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("batch", [0, 1, 3, 4, 16, 37])
@pytest.mark.parametrize(
    "shape",
    [
        (512, 256, 0.75, {}),  # micro-blocks of 16
        (56, 96, 0.75, {"block": (1, 8), "group_rows": 8}),  # of 8
        (688, 256, 0.9, {}),  # padding rows
        (100, 60, 0.5, {"block": (1, 1)}),  # one column at a time
    ],
)
def test_matches_reference(shape, batch, kind, native_isa):
    out, inp, sparsity, kw = shape
    _check(make_layout(out, inp, sparsity, **kw), batch, kind)


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 3, 6, 7])
def test_odd_group_rows(rows, kind, native_isa):
    """The kernels take rows two or four at a time: odd groups end on rows of their own."""
    layout = random_group_layout(rows * 15, 77, rows, 13)
    for batch in (1, 5, 37):
        _check(layout, batch, kind)


@pytest.mark.parametrize("out", [120, 100])  # 100: a share of rows that is no multiple of 8 (scalar rest)
def test_rows_in_any_order_at_wide_batches(out, native_isa):
    """Rows in data order (calibrated layouts: neither consecutive nor strided) at batches of several
    panels: every output row, bias, and inf/NaN samples land where nn.Linear puts them."""
    layout = random_group_layout(out, 64, 4 if out == 100 else 8, 16)
    g = torch.Generator().manual_seed(out)
    values, bias = torch.randn(layout.values_shape, generator=g), torch.randn(out, generator=g)
    x = torch.randn(50, 64, generator=g)  # panels of 24, 24 and 2 samples
    x[0, 3], x[30, 7] = float("nan"), float("inf")
    y = native.grouped_small(x, values, layout, None, bias)
    ref = reference_linear(x.double(), values.double(), layout) + bias.double()
    assert torch.equal(torch.isfinite(y), torch.isfinite(ref)) and not torch.isfinite(y[[0, 30]]).any()
    keep = [i for i in range(50) if i not in (0, 30)]
    assert (y[keep].double() - ref[keep]).abs().max().item() <= TOL * max(1.0, ref[keep].abs().max().item())


def test_unaligned_columns_and_strided_input(native_isa):
    layout = random_group_layout(96, 77, 8, 13)
    assert layout.block_width == 1
    for batch in (1, 5):
        _check(layout, batch, "fp32", strided=True)


def test_bad_inputs():
    layout = make_layout(64, 64, 0.75)
    values = torch.randn(layout.values_shape)
    with pytest.raises(ValueError, match="fp32 CPU inputs"):
        native.grouped_small(torch.randn(2, 64, dtype=torch.float64), values, layout)
    with pytest.raises(ValueError, match="int8 values need their per-row scales"):
        native.grouped_small(torch.randn(2, 64), values.to(torch.int8), layout)


def test_dispatch_small_batches_without_gradient(monkeypatch):
    calls = []
    call = native._call
    monkeypatch.setattr(native, "_call", lambda *a: calls.append(a[1]) or call(*a))  # a[1]: the batch
    layout = make_layout(512, 256, 0.75)
    values = torch.randn(layout.values_shape, requires_grad=True)
    weight = SparseWeight(values, layout)
    x = torch.randn(4, 256)
    with torch.no_grad():
        y = rbgp_linear(x, weight)
    assert y.is_contiguous() and y.grad_fn is None and calls == [4]  # the native kernel
    y_grad = rbgp_linear(x, weight)  # a gradient is wanted: the autograd path
    assert y_grad.grad_fn is not None
    torch.testing.assert_close(y_grad.detach(), y, rtol=1e-5, atol=1e-5)
    wide = native.isa() == "avx2"  # the AVX2 build takes any batch of a linear layer
    with torch.no_grad():
        big = rbgp_linear(torch.randn(native.MAX_BATCH + 1, 256), weight)
    assert big.is_contiguous() and calls == [4, native.MAX_BATCH + 1] if wide else [4]  # else the batched GEMMs
    calls.clear()
    short = make_layout(128, 64, 0.75, group_rows=8)  # groups of 8 rows: the kernel up to SMALL_GROUP_MAX_BATCH rows
    assert short.values_shape[1] <= native.SMALL_GROUP_ROWS
    short_weight = SparseWeight(torch.randn(short.values_shape), short)
    sizes = (native.MAX_BATCH + 1, native.SMALL_GROUP_MAX_BATCH, native.SMALL_GROUP_MAX_BATCH + 1, 4096)
    with torch.no_grad():
        for n in sizes:
            rbgp_linear(torch.randn(n, 64), short_weight)
        assert calls == (list(sizes) if wide else [native.MAX_BATCH + 1, native.SMALL_GROUP_MAX_BATCH])
        calls.clear()
        for n in (native.SMALL_GROUP_MAX_BATCH, 4096):  # a conv's im2col rows: thousands, the GEMMs on either build
            rbgp_linear(torch.randn(64, n).t(), short_weight, im2col=True)
    assert calls == [native.SMALL_GROUP_MAX_BATCH]


def test_unavailable_kernel_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(native._Library, "tried", False)
    monkeypatch.setattr(native._Library, "handle", None)
    monkeypatch.setenv("RBGP_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="native small-batch kernel is not available"):
        assert not native.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert not native.available()
        layout = make_layout(64, 64, 0.75)
        values = torch.randn(layout.values_shape)
        x = torch.randn(2, 64)
        with torch.no_grad():
            y = rbgp_linear(x, SparseWeight(values, layout))
    torch.testing.assert_close(y, reference_linear(x, values, layout), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(native._Library, "tried", False)
    monkeypatch.setenv("RBGP_NATIVE", "0")
    assert not native.available()  # turned off: no warning, no build
    assert not list(tmp_path.iterdir())


def test_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(native._Library, "tried", False)
    monkeypatch.setattr(native._Library, "handle", None)
    monkeypatch.setenv("RBGP_CACHE_DIR", str(tmp_path))
    assert native.available()
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("grouped_small-") and built[0].suffix == ".so"
    monkeypatch.setattr(native._Library, "tried", False)
    stamp = built[0].stat().st_mtime_ns
    assert native.available() and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_compiled_with_dynamic_batch():
    from rbgp.nn import RBGPLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(RBGPLinear(256, 512, 0.75), torch.nn.ReLU(), RBGPLinear(512, 256, 0.75)).eval()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for batch in (1, 3, 7):
            x = torch.randn(batch, 256)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
def test_bias_added_in_the_kernel(kind, native_isa):
    layout = make_layout(688, 256, 0.9)  # padding rows: the bias has out_features entries only
    g = torch.Generator().manual_seed(3)
    values = torch.randn(layout.values_shape, generator=g)
    scales = None
    if kind == "bf16":
        values = values.bfloat16()
    elif kind == "int8":
        scales = values.abs().amax(-1) / 127
        values = torch.round(values / scales[..., None]).to(torch.int8)
    bias = torch.randn(688, generator=g)
    for batch in (1, 5, 37):
        x = torch.randn(batch, 256, generator=g)
        got = native.grouped_small(x, values, layout, scales, bias)
        torch.testing.assert_close(got, native.grouped_small(x, values, layout, scales) + bias, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bias must be fp32 \\(688,\\)"):
        native.grouped_small(x, values, layout, scales, bias[:5])


def _stored(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(stored weight, scales or None, the exact fp64 weight they stand for)."""
    if kind == "bf16":
        return w.bfloat16(), None, w.bfloat16().double()
    if kind == "int8":
        q, s = native_quantize(w)
        return q, s, q.double() * s.double()[:, None]
    return w, None, w.double()


def native_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from rbgp.ops import quantize_rows

    q, s = quantize_rows(w[None])
    return q[0], s[0]


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("shape", [(37, 29), (64, 256), (100, 7), (3, 1)])
def test_dense_matches_reference(shape, kind, native_isa):
    """The dense entry (a head kept dense, stored in bf16/int8): odd row counts (chunks of 16 and a
    rest), odd widths (the 8-wide steps and a scalar tail), strided inputs, bias, NaN rows."""
    out, inp = shape
    g = torch.Generator().manual_seed(out * inp)
    weight, scales, exact = _stored(torch.randn(out, inp, generator=g), kind)
    bias = torch.randn(out, generator=g)
    for batch in (0, 1, 2, 5, 16):
        x = torch.randn(batch, 2 * inp, generator=g)[:, ::2] if batch % 2 else torch.randn(batch, inp, generator=g)
        y = native.dense_small(x, weight, scales, bias)
        ref = x.double() @ exact.T + bias.double()
        assert y.shape == (batch, out) and y.dtype == torch.float32 and y.is_contiguous()
        if batch:
            assert (y.double() - ref).abs().max().item() <= TOL * max(1.0, ref.abs().max().item())
    x = torch.randn(3, inp, generator=g)
    x[1, 0] = float("nan")
    y = native.dense_small(x, weight, scales)
    assert y[1].isnan().all() and not y[[0, 2]].isnan().any()


def test_dense_bad_inputs():
    w = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"need x \(N, in\) and weight \(out, in\)"):
        native.dense_small(torch.randn(2, 5), w)
    with pytest.raises(ValueError, match="int8 values need their per-row scales"):
        native.dense_small(torch.randn(2, 4), w.to(torch.int8))
    with pytest.raises(ValueError, match=r"scales must be \(8,\)"):
        native.dense_small(torch.randn(2, 4), w.to(torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="fp32 CPU inputs"):
        native.dense_small(torch.randn(2, 4, dtype=torch.float64), w)


def test_isa_request_checked():
    with pytest.raises(ValueError, match="'plain' or 'avx2'"):
        native.isa("avx512")


@pytest.mark.parametrize(
    "setting, bad, narrow, wide, message",
    [
        ("wide_rows", 6, 4, 8, "rows must be 4 or 8, got 6"),
        ("vector_bits", 128, 256, 512, "bits must be 256 or 512, got 128"),
    ],
)
def test_tile_settings_checked_and_follow_the_cpu(setting, bad, narrow, wide, message):
    """The wide tiles' height and vector width: bad requests refused, the AVX-512VL form only where the CPU has it."""
    choose = getattr(native, setting)
    with pytest.raises(ValueError, match=message):
        choose(bad)
    default = choose()
    try:
        assert choose(narrow) == narrow
        has_avx512vl = "avx512vl" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
        got = choose(wide)
        assert got in (narrow, wide) and (has_avx512vl is None or (got == wide) == has_avx512vl)
    finally:
        choose(default)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_eager_path_keeps_the_input_shape(kind):
    """The eager fast path (`eager_linear`) on unbatched, 3-D, empty and non-contiguous inputs gives what
    the general dispatch gives, in the input's leading shape, contiguous; it declines what it must not take."""
    layout = make_layout(96, 64, 0.75)
    g = torch.Generator().manual_seed(5)
    values = torch.randn(layout.values_shape, generator=g)
    scales = None
    if kind == "int8":
        scales = values.abs().amax(-1) / 127
        values = torch.round(values / scales[..., None]).to(torch.int8)
    weight = SparseWeight(values, layout, scales=scales)
    bias = torch.randn(96, generator=g)
    dense = weight.dense().double()
    with torch.no_grad():
        for x in (torch.randn(64, generator=g), torch.randn(2, 3, 64, generator=g), torch.randn(0, 64),
                  torch.randn(3, 64, 2, generator=g).transpose(1, 2)):
            y = native.eager_linear(x, values, layout, scales, bias)
            if not x.is_contiguous():
                assert y is None  # the general dispatch copes with it
                y = rbgp_linear(x, weight, bias)
            assert y is not None and y.shape == (*x.shape[:-1], 96) and y.is_contiguous()
            if x.numel():
                ref = x.double() @ dense.T + bias.double()
                assert (y.double() - ref).abs().max().item() <= TOL * max(1.0, ref.abs().max().item())
        assert native.eager_linear(torch.randn(2, 64, dtype=torch.float64), values, layout, scales, bias) is None
        if native.isa() == "plain":  # the AVX2 build takes any batch
            assert native.eager_linear(torch.randn(native.batch_limit(values) + 1, 64), values, layout, scales,
                                       bias) is None
    grad_x = torch.randn(2, 64, requires_grad=True)
    assert native.eager_linear(grad_x, values, layout, scales, bias) is None  # a gradient is wanted


@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("rows", [6, 10, 16, 22, 64])
def test_long_rows_take_six_row_tiles(rows, kind, native_isa):
    """Rows of 128 columns or more take tiles of 6 rows where 4-row tiles then end the group (16 = 6 + 6 + 4,
    22 = 6 + 4 x 4, 10 = 6 + 4, 64 = 10 x 6 + 4), from batch 4; odd batches end on a one-sample tile."""
    layout = random_group_layout(rows * 3, 200, rows, 136)
    for batch in (4, 5, 37):
        _check(layout, batch, kind, seed=rows)


def test_eager_path_leaves_odd_biases_to_the_general_dispatch():
    """A bias the kernel cannot read row by row is not handed to it: a strided one is made contiguous by the
    general dispatch, a wrongly shaped one refused with its shape named (never read out of bounds)."""
    layout = make_layout(96, 64, 0.75)
    values = torch.randn(layout.values_shape)
    x = torch.randn(2, 64)
    strided, short = torch.randn(192)[::2], torch.tensor([0.5])
    with torch.no_grad():
        assert native.eager_linear(x, values, layout, None, strided) is None
        assert native.eager_linear(x, values, layout, None, short) is None
        plain = rbgp_linear(x, SparseWeight(values, layout))
        torch.testing.assert_close(rbgp_linear(x, SparseWeight(values, layout), strided), plain + strided)
        with pytest.raises(ValueError, match=r"bias must be fp32 \(96,\), got torch.float32 \(1,\)"):
            rbgp_linear(x, SparseWeight(values, layout), short)


def test_the_kept_plan_follows_the_layer_tensors():
    """A layer's kept plan serves while its tensors stay where they are: in-place updates are seen; data
    swapped in place (as Module.to does) or a new parameter (store_values_) get a new plan, never stale
    addresses."""
    from rbgp import store_values_
    from rbgp.nn import RBGPLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(RBGPLinear(64, 96, 0.75))
    layer, x = model[0], torch.randn(3, 64)

    def expected() -> torch.Tensor:
        return x.double() @ layer.sparse_weight.dense().double().T + layer.bias.double()

    def close(y: torch.Tensor, ref: torch.Tensor) -> None:
        assert (y.double() - ref).abs().max().item() <= TOL * ref.abs().max().item()

    with torch.no_grad():
        layer(x)
        plan = layer._workspace.plan
        assert plan is not None
        close(layer(x), expected())
        assert layer._workspace.plan is plan  # kept, not rebuilt
        layer.values.mul_(2)
        layer.bias.add_(1)
        close(layer(x), expected())  # in place: the same plan sees it
        assert layer._workspace.plan is plan
        layer.values.data = layer.values.data * 3  # swapped in place (new memory); a stale plan reads the old
        close(layer(x), expected())
        assert layer._workspace.plan is not plan
        layer.bias.data = layer.bias.data - 1
        close(layer(x), expected())
        store_values_(model, torch.int8)
        close(layer(x), expected())
        assert layer.values.dtype == torch.int8 and layer._workspace.plan.key[1] == torch.int8


@pytest.mark.parametrize("rows", [8, 12, 3])
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_wide_tiles_store_interleaved_rows_as_vectors(native_isa, rows, kind):
    """RBGP4's strided row order for linear layers (group g's rows g, g + G, g + 2G, ...) lets a chunk of 8
    groups store each row of theirs as one vector (8 rows transposed at a time, the rest one by one);
    with two rows swapped the chunk is no longer interleaved and takes the generic store. Each against
    the fp64 reference, with bias, at batches that fill a panel and end with a part of one."""
    g_count, inp, cols = 16, 64, 24
    rng = np.random.default_rng(rows)
    row_index = np.arange(g_count)[:, None] + g_count * np.arange(rows)[None, :]
    swapped = row_index.copy()
    swapped[[0, 1], 0] = swapped[[1, 0], 0]
    col_index = np.sort(np.stack([rng.choice(inp, cols, replace=False) for _ in range(g_count)]), axis=1)
    for order in (row_index, swapped):
        layout = LayoutTensors.from_layout(GroupedLayout(g_count * rows, inp, order, col_index))
        g = torch.Generator().manual_seed(rows)
        values = torch.randn(g_count, rows, cols, generator=g)
        scales = None
        if kind == "int8":
            scales = values.abs().amax(-1) / 127
            values = torch.round(values / scales[..., None]).to(torch.int8)
        exact = values.double() * (scales.double()[..., None] if scales is not None else 1)
        bias = torch.randn(g_count * rows, generator=g)
        for batch in (24, 37):
            x = torch.randn(batch, inp, generator=g)
            y = native.grouped_small(x, values, layout, scales, bias)
            ref = reference_linear(x.double(), exact, layout, bias.double())
            assert (y.double() - ref).abs().max().item() <= TOL * ref.abs().max().item()
