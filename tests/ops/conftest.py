"""Shared checks of the Triton kernels against the fp64 reference (used by the interpreter and GPU tests).

Only helpers live here: this file sets no environment variable and imports no triton.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rbgp.ops import LayoutTensors, dense_weight, grouped_values, rbgp_linear
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
    y = rbgp_linear(xk, vk, layout, backend="triton")
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


@pytest.fixture
def tk() -> SimpleNamespace:
    """The helpers above, for test modules (importlib import mode: conftest is not importable)."""
    return SimpleNamespace(check=check_triton, make_layout=make_layout, random_group_layout=random_group_layout)
