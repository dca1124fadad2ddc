"""Shared checks of the Triton kernels against the fp64 reference (used by the interpreter and GPU tests).

Only helpers live here: this file sets no environment variable and imports no triton.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rbgp.ops import LayoutTensors, SparseWeight, dense_weight, grouped_values, rbgp_linear
from rbgp.patterns import RBGP4, GroupedLayout


def make_layout(out: int, inp: int, sparsity: float, seed: int = 0, device="cpu", **kw) -> LayoutTensors:
    return LayoutTensors.from_layout(RBGP4(**kw).build((out, inp), sparsity, seed).layout, device)


def random_group_layout(out: int, inp: int, rows: int, cols: int, seed: int = 0, device="cpu") -> LayoutTensors:
    """Groups of `rows` rows reading `cols` random (sorted, unblocked) columns: the BW = 1 fallback;
    some input columns are read by no group."""
    rng = np.random.default_rng(seed)
    row_index = rng.permutation(out).reshape(out // rows, rows)
    col_index = np.sort(np.stack([rng.choice(inp, cols, replace=False) for _ in range(out // rows)]), axis=1)
    return LayoutTensors.from_layout(GroupedLayout(out, inp, row_index, col_index), device)


def _max_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.double() - ref).abs().max().item()


def check_triton(layout: LayoutTensors, batch: int, dtype: torch.dtype, device="cpu", seed: int = 0,
                 strided: bool = False) -> dict[str, tuple[float, float]]:
    """Forward, grad-input and grad-weight of backend "triton" against an fp64 reference.

    Tolerance tied to the dtype: the kernel's error may be at most 2x the error PyTorch's own matmul
    makes in `dtype` on the same problem (masked dense weight), plus eps(dtype) * max|ref|.
    strided: feed x and dy as transposed (feature-major) views, as RBGPConv2d does.
    Returns {name: (kernel error, bound)}.
    """
    gen = torch.Generator(device).manual_seed(seed)
    opts = {"dtype": torch.float64, "device": device, "generator": gen}
    values = torch.randn(layout.values_shape, **opts)
    x = torch.randn(batch, layout.in_features, **opts)
    gy = torch.randn(batch, layout.out_features, **opts)
    w = dense_weight(values, layout)
    ref = {"y": x @ w.t(), "dx": gy @ w, "dv": grouped_values(gy.t() @ x, layout)}
    xd, wd, gyd = x.to(dtype), w.to(dtype), gy.to(dtype)
    own = {"y": xd @ wd.t(), "dx": gyd @ wd, "dv": grouped_values(gyd.t() @ xd, layout)}
    if strided:
        xd, gyd = xd.t().contiguous().t(), gyd.t().contiguous().t()
    xk = xd.detach().requires_grad_()
    vk = values.to(dtype).requires_grad_()
    y = rbgp_linear(xk, SparseWeight(vk, layout), backend="triton")
    y.backward(gyd)
    got = {"y": y, "dx": xk.grad, "dv": vk.grad}
    eps = torch.finfo(dtype).eps
    out = {}
    for name in ref:
        assert got[name].dtype == dtype and got[name].shape == ref[name].shape, name
        err = _max_err(got[name], ref[name])
        bound = 2 * _max_err(own[name], ref[name]) + eps * ref[name].abs().max().item()
        out[name] = (err, bound)
        assert err <= bound, f"{name} ({dtype}): kernel error {err:.3e} > bound {bound:.3e}"
    return out


# (c_in, c_out, kernel, stride, padding, H x W, sparsity, group_rows): rows per group R and block width BW
CONV_LAYOUTS = [
    pytest.param((16, 16, 3, 1, 1, (5, 6), 0.75, 128), id="R2-bw9"),  # 64->64-like: 2-row groups, FMA tiles
    pytest.param((16, 32, 3, 2, 1, (7, 5), 0.75, 4), id="R4-bw9-stride2"),
    pytest.param((24, 32, 3, 1, 0, (6, 6), 0.5, 8), id="R8-bw9-valid"),
    pytest.param((8, 48, 5, 1, 2, (4, 5), 0.5, 16), id="R16-bw25"),  # tl.dot tiles along R
    pytest.param((32, 16, 1, 1, 0, (3, 5), 0.75, 4), id="1x1-R4"),
]


def pytest_generate_tests(metafunc) -> None:
    """`conv_case` runs a test over CONV_LAYOUTS (in the interpreter and the GPU modules alike)."""
    if "conv_case" in metafunc.fixturenames:
        metafunc.parametrize("conv_case", CONV_LAYOUTS)


def check_conv(case: tuple, device: str, dtype: torch.dtype) -> None:
    """Forward, grad-input and grad-values of an RBGPConv2d (a CONV_LAYOUTS case) on backend "triton"
    against fp64 F.conv2d with the masked weight; bound: 2x the error of F.conv2d itself in `dtype`,
    plus eps(dtype) * max|ref|."""
    from rbgp.nn import RBGPConv2d

    cin, cout, k, stride, pad, hw, sparsity, group_rows = case
    torch.manual_seed(0)
    layer = RBGPConv2d(cin, cout, k, stride=stride, padding=pad, sparsity=sparsity, backend="triton",
                       pattern=RBGP4(group_rows=group_rows), device=device)
    assert layer.block_width % (k * k) == 0, "whole input channels per block"
    x = torch.randn(3, cin, *hw, device=layer.values.device)
    conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    w64 = layer.dense_weight().detach().double().requires_grad_()
    x64 = x.double().requires_grad_()
    y64 = F.conv2d(x64, w64, layer.bias.detach().double(), **conv)
    gy = torch.randn(y64.shape, dtype=torch.float64, device=x.device,
                     generator=torch.Generator(x.device).manual_seed(1))
    y64.backward(gy)
    wd = w64.detach().to(dtype).requires_grad_()
    xd = x.to(dtype).requires_grad_()
    yd = F.conv2d(xd, wd, layer.bias.detach().to(dtype), **conv)
    yd.backward(gy.to(dtype))
    layer = layer.to(dtype)
    xk = x.to(dtype).requires_grad_()
    y = layer(xk)
    y.backward(gy.to(dtype))
    as_values = lambda g: grouped_values(g.reshape(layer.structure.shape).double(), layer.layout)  # noqa: E731
    eps = torch.finfo(dtype).eps
    for name, got, own, ref in [("y", y, yd, y64), ("dx", xk.grad, xd.grad, x64.grad),
                                ("dv", layer.values.grad, as_values(wd.grad), as_values(w64.grad))]:
        assert got.dtype == dtype and got.shape == ref.shape, name
        err = (got.double() - ref).abs().max().item()
        bound = 2 * (own.double() - ref).abs().max().item() + eps * ref.abs().max().item()
        assert err <= bound, f"{name} ({dtype}): kernel error {err:.3e} > bound {bound:.3e}"


def check_conv_against_dense(layer, dense: torch.nn.Conv2d, x: torch.Tensor, dtype: torch.dtype,
                             tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An RBGPConv2d with float64 weights, cast to `dtype`, on x against `dense` (float64, the same
    conv with the masked weight copied in): output, grad-input, grad-values and grad-bias within
    tol * max|ref|. Returns (output, reference output)."""
    import copy

    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    xr = x.clone().requires_grad_()
    ref = dense(xr)
    gy = torch.randn_like(ref)
    ref.backward(gy)
    low = copy.deepcopy(layer).to(dtype)
    xt = x.to(dtype).requires_grad_()
    y = low(xt)
    y.backward(gy.to(dtype))
    pairs = [(y, ref), (xt.grad, xr.grad),
             (low.values.grad, grouped_values(dense.weight.grad.reshape(layer.out_channels, -1), layer.layout))]
    if layer.bias is not None:
        pairs.append((low.bias.grad, dense.bias.grad))
    for got, want in pairs:
        err = (got.double() - want).abs().max().item()
        assert err <= tol * want.abs().max().item() + 1e-12, (dtype, err)
    return y, ref


@pytest.fixture(params=["plain", "avx2", "avx2-wide"])
def native_isa(request):
    """Runs a test on each build of the native kernel this CPU has: plain C, AVX2+FMA, and AVX2+FMA with
    its wide-batch tiles from batch 1 (by default they take batches from `native.wide_from()`)."""
    from rbgp.ops import native

    if not native.available():
        pytest.skip("no C compiler to build the native kernel")
    default, default_wide = native.isa(), native.wide_from()
    build = request.param.removesuffix("-wide")
    if native.isa(build) != build:
        native.isa("avx2" if default == "avx2" else "plain")
        pytest.skip(f"this CPU has no {build} build")
    if request.param.endswith("-wide"):
        native.wide_from(1)
    yield build
    native.isa(default)
    native.wide_from(default_wide)


@pytest.fixture
def tk() -> SimpleNamespace:
    """The helpers above, for test modules (importlib import mode: conftest is not importable)."""
    return SimpleNamespace(check=check_triton, check_conv=check_conv, make_layout=make_layout, random_group_layout=random_group_layout,
                           check_conv_against_dense=check_conv_against_dense)
