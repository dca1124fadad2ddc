"""The Triton kernels compiled for a real GPU, against the fp64 reference: the interpreter sweep's odd
shapes plus layer sizes (4096^2, batch 4096, densities 1/4..1/16), native bf16 dots included.

Skipped unless CUDA is present and the kernels are not interpreted (TRITON_INTERPRET unset; run this
module on its own when another module of the session turned the interpreter on).
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 in this session: run `pytest tests/ops/test_triton_gpu.py` alone",
                allow_module_level=True)
pytest.importorskip("triton")

from rbgp.nn import RBGPLinear  # noqa: E402
from rbgp.ops import SparseWeight, rbgp_linear, resolve_backend  # noqa: E402
from rbgp.ops import triton_launch as L  # noqa: E402

if sys.modules["rbgp.ops.triton_kernels"].INTERPRETED:
    pytest.skip("the kernels were imported interpreted in this session", allow_module_level=True)

DEV = "cuda"
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]


@pytest.fixture(autouse=True)
def _no_tf32():
    """The fp32 comparisons are like with like: torch's own fp32 matmul without TF32 as the yardstick."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out,inp,batch,sparsity,kw", [
    (64, 128, 5, 0.75, {}),
    (96, 48, 7, 0.5, {"block": (1, 4), "group_rows": 8}),
    (48, 80, 3, 0.75, {"block": (2, 4), "group_rows": 4}),
    (40, 24, 1, 0.5, {"block": (1, 1), "group_rows": 2}),
    (160, 144, 37, 0.75, {"block": (1, 8), "group_rows": 40}),
    (1024, 768, 333, 0.875, {}),
])
def test_small_and_odd_shapes(tk, dtype, out, inp, batch, sparsity, kw):
    tk.check(tk.make_layout(out, inp, sparsity, device=DEV, **kw), batch, dtype, device=DEV)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unblocked_layout_and_strides(tk, dtype):
    tk.check(tk.random_group_layout(256, 384, rows=32, cols=40, device=DEV), 129, dtype, device=DEV)
    tk.check(tk.make_layout(512, 512, 0.75, device=DEV), 200, dtype, device=DEV, strided=True)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [1 / 4, 1 / 8, 1 / 16])
def test_layer_sizes(tk, dtype, density):
    tk.check(tk.make_layout(4096, 4096, 1 - density, device=DEV), 4096, dtype, device=DEV)


def test_tf32_is_opt_in(tk):
    """input_precision="tf32" runs (and is less exact than the default "ieee")."""
    from rbgp.ops.triton_ops import triton_linear

    layout = tk.make_layout(1024, 1024, 0.75, device=DEV)
    x = torch.randn(512, 1024, device=DEV)
    v = torch.randn(layout.values_shape, device=DEV)
    ref = rbgp_linear(x.double(), SparseWeight(v.double(), layout), backend="reference")
    err_ieee = (triton_linear(x, v, layout) - ref).abs().max().item()
    err_tf32 = (triton_linear(x, v, layout, input_precision="tf32") - ref).abs().max().item()
    assert err_ieee < err_tf32 < 1e-2 * ref.abs().max().item()


def test_auto_picks_triton_and_is_deterministic(tk):
    assert resolve_backend("auto", torch.device(DEV), torch.bfloat16) == "triton"
    layout = tk.make_layout(1024, 1024, 0.875, device=DEV)
    args = (layout.row_index, layout.col_entries, layout.block_width, 1024)
    gy = torch.randn(999, 1024, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(layout.values_shape, device=DEV, dtype=torch.bfloat16)
    assert torch.equal(L.grouped_grad_input(gy, v, *args), L.grouped_grad_input(gy, v, *args))


def test_inductor_compile_fullgraph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(RBGPLinear(512, 1024, 0.75), torch.nn.GELU(), RBGPLinear(1024, 256, 0.75)).to(DEV)
    x = torch.randn(300, 512, device=DEV)
    y_eager = model(x)
    torch._dynamo.reset()
    y = torch.compile(model, fullgraph=True)(x)
    y.sum().backward()
    assert torch.allclose(y, y_eager, atol=1e-4, rtol=1e-4)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_channel_layouts(tk, dtype, conv_case):
    """Channel layouts with 2- to 16-row groups, compiled natively (FMA tiles below 16 rows)."""
    tk.check_conv(conv_case, DEV, dtype)
