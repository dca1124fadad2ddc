"""The Triton kernels on the CPU under Triton's interpreter, against the fp64 dense reference.

The interpreter runs the real kernel code (same loads, masks, tl.dot calls) on small, odd shapes. bf16
caveat: the interpreter cannot multiply bf16 (it multiplies the raw uint16 bit patterns) and truncates
fp32 -> bf16, so under it the kernels cast bf16 tiles to fp32 before tl.dot and round the output to
nearest even by hand (`EMULATE_BF16`); the bf16 cases here therefore test fp32 dots on bf16 data. On a
GPU (tests/ops/test_triton_gpu.py) bf16 tiles go to the tensor cores natively.

With CUDA present this module is skipped unless TRITON_INTERPRET=1 was set by the caller: it would
otherwise switch the whole session to the interpreter, and the GPU module runs the same sweep natively.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("CUDA present: test_triton_gpu.py runs the kernels natively (TRITON_INTERPRET=1 to run these)",
                allow_module_level=True)
_loaded = sys.modules.get("rbgp.ops.triton_kernels")
if _loaded is not None and not _loaded.INTERPRETED:
    pytest.skip("the Triton kernels were already imported for the GPU in this session", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton_kernels is imported: its kernels are built interpreted
pytest.importorskip("triton")

from rbgp.nn import RBGPLinear  # noqa: E402
from rbgp.ops import LayoutTensors, SparseWeight, dense_weight, rbgp_linear, reference_linear, resolve_backend  # noqa: E402
from rbgp.ops.layout import detect_block_width  # noqa: E402
from rbgp.ops import triton_kernels as K  # noqa: E402
from rbgp.ops import triton_launch as L  # noqa: E402
from rbgp.ops import triton_ops as O  # noqa: E402
from rbgp.patterns import RBGP4  # noqa: E402

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16-fp32dots-interpreter")]

# (out, in, batch, sparsity, RBGP4 kwargs): values shape (G, R, K) and block width BW in the comments
SHAPES = [
    pytest.param(64, 128, 5, 0.75, {}, id="64x128-b5"),  # (8, 8, 32), BW 16
    pytest.param(96, 48, 7, 0.5, {"block": (1, 4), "group_rows": 8}, id="96x48-b7"),  # (12, 8, 24), BW 4
    pytest.param(48, 80, 3, 0.75, {"block": (2, 4), "group_rows": 4}, id="48x80-b3-block2x4"),  # (12, 4, 20), BW 4
    pytest.param(40, 24, 1, 0.5, {"block": (1, 1), "group_rows": 2}, id="40x24-b1-bw1"),  # (20, 2, 12), BW 1
    # (8, 20, 36), BW 4: R, K and N above one 16-tile and not multiples of it
    pytest.param(160, 144, 37, 0.75, {"block": (1, 8), "group_rows": 40}, id="160x144-b37"),
]


def test_interpreter_is_on_and_bf16_is_emulated():
    assert K.INTERPRETED
    flags = L._flags(torch.bfloat16, torch.device("cpu"), "ieee")
    assert flags == {"INPUT_PRECISION": "ieee", "EMULATE_BF16": True}, "bf16: fp32 dots under the interpreter"
    assert not L._flags(torch.float16, torch.device("cpu"), "tf32")["EMULATE_BF16"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out,inp,batch,sparsity,kw", SHAPES)
def test_triton_matches_reference(tk, dtype, out, inp, batch, sparsity, kw):
    tk.check(tk.make_layout(out, inp, sparsity, **kw), batch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unblocked_layout_and_unread_columns(tk, dtype):
    """Random columns (BW = 1 fallback), some input columns read by no group (their dx must be 0)."""
    layout = tk.random_group_layout(24, 40, rows=6, cols=9)
    assert layout.block_width == 1 and (layout.col_entries < 0).any()
    tk.check(layout, 6, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-fp32dots-interpreter"])
def test_strided_inputs(tk, dtype):
    """x and dy as transposed (feature-major) views, as RBGPConv2d hands them over: no copies needed."""
    tk.check(tk.make_layout(96, 48, 0.5, block=(1, 4), group_rows=8), 19, dtype, strided=True)


def test_tf32_precision_is_accepted_and_bad_one_rejected():
    layout = LayoutTensors.from_layout(RBGP4(group_rows=8).build((32, 64), 0.75, 0).layout)
    x, v = torch.randn(3, 64), torch.randn(layout.values_shape)
    y = O.triton_linear(x, v, layout, input_precision="tf32")  # the interpreter's dots are exact either way
    assert torch.allclose(y, reference_linear(x, v, layout), atol=1e-5)
    with pytest.raises(ValueError, match="input_precision.*'fp8'"):
        O.triton_linear(x, v, layout, input_precision="fp8")
    with pytest.raises(ValueError, match="float64"):
        O.triton_linear(x.double(), v.double(), layout)


def test_outputs_are_feature_major(tk):
    """y and dx come back as transposed views of (features, N) buffers, like the grouped path's."""
    layout = tk.make_layout(64, 128, 0.75)
    x, v = torch.randn(5, 128), torch.randn(layout.values_shape)
    y = O.grouped_linear_fwd(x, v, layout.row_index, layout.col_blocks, layout.col_entries, layout.block_width)
    dx = O.grouped_linear_bwd_input(torch.randn(5, 64), v, layout.row_index, layout.col_entries, layout.block_width,
                                    128)
    assert y.shape == (5, 64) and y.stride() == (1, 5)
    assert dx.shape == (5, 128) and dx.stride() == (1, 5)


def test_empty_batch(tk):
    layout = tk.make_layout(64, 128, 0.75)
    v = torch.randn(layout.values_shape, requires_grad=True)
    x = torch.randn(0, 128, requires_grad=True)
    y = rbgp_linear(x, SparseWeight(v, layout), backend="triton")
    y.sum().backward()
    assert y.shape == (0, 64) and torch.equal(v.grad, torch.zeros_like(v))


def test_grad_input_is_deterministic(tk):
    layout = tk.make_layout(96, 48, 0.5, block=(1, 4), group_rows=8)
    gy, v = torch.randn(9, 96), torch.randn(layout.values_shape)
    args = (layout.row_index, layout.col_entries, layout.block_width, 48)
    assert torch.equal(L.grouped_grad_input(gy, v, *args), L.grouped_grad_input(gy, v, *args))


# ---- index tables and the plain-python descriptions (no interpreter) -----------------------------------

def test_block_width_detection(tk):
    assert tk.make_layout(64, 128, 0.75).block_width == 16
    assert detect_block_width(tk.make_layout(48, 80, 0.75, block=(2, 4), group_rows=4).col_index) == 4
    assert detect_block_width(tk.make_layout(40, 24, 0.5, block=(1, 1), group_rows=2).col_index) == 1
    aligned_wrong = torch.tensor([[2, 3, 4, 5]])  # contiguous but not aligned to 4: only BW 2
    assert detect_block_width(aligned_wrong) == 2
    assert detect_block_width(torch.tensor([[8, 9, 10, 11, 0, 1, 2, 3]])) == 4  # blocks in any order
    with pytest.raises(ValueError, match="block_width=8"):
        LayoutTensors.from_indices(torch.tensor([[0]]), torch.tensor([[0, 1, 2, 3, 8, 9, 10, 11]]), 16, block_width=8)


@pytest.mark.parametrize("make", [
    lambda tk: tk.make_layout(96, 48, 0.5, block=(1, 4), group_rows=8),
    lambda tk: tk.make_layout(160, 144, 0.75, block=(1, 8), group_rows=40),
    lambda tk: tk.random_group_layout(24, 40, rows=6, cols=9),
], ids=["bw4", "bw4-ragged", "bw1-unread-cols"])
def test_tables_and_python_descriptions(tk, make):
    """The block tables reproduce col_index, and the kernels' plain-torch descriptions on those tables
    match the dense reference (forward, grad-input over the transposed table, grad-weight)."""
    tab = layout = make(tk)
    inp = layout.in_features
    bw = tab.block_width
    assert torch.equal(K.block_columns_reference(tab.col_blocks, bw), layout.col_index)
    kb = tab.col_blocks.shape[1]
    for b in range(tab.col_entries.shape[0]):  # every (g, slot) is listed under its block exactly once
        listed = sorted(e for e in tab.col_entries[b].tolist() if e >= 0)
        assert listed == [e for e in range(tab.col_blocks.numel()) if tab.col_blocks.view(-1)[e] == b]
    assert tab.col_blocks.dtype == tab.col_entries.dtype == torch.int32
    assert tab.col_blocks.numel() == layout.col_index.numel() // bw  # one index per micro-block
    x, v, gy = torch.randn(5, inp, dtype=torch.float64), torch.randn(layout.values_shape, dtype=torch.float64), \
        torch.randn(5, layout.out_features, dtype=torch.float64)
    w = dense_weight(v, layout)
    assert torch.allclose(K.fwd_reference(x, v, tab.row_index, tab.col_blocks, bw), x @ w.t())
    assert torch.allclose(K.bwd_input_reference(gy, v, tab.row_index, tab.col_entries, bw, inp), gy @ w)
    dv = K.bwd_values_reference(gy, x, tab.row_index, tab.col_blocks, bw)
    assert torch.allclose(dv, (gy.t() @ x)[layout.row_index[:, :, None], layout.col_index[:, None, :]])
    assert kb * bw == layout.values_shape[2]


def test_layout_moves_as_one_object(tk):
    """Every table is built once with the layout and travels with .to(); a layer registers them all."""
    layout = tk.make_layout(64, 128, 0.75)
    moved = layout.to("meta")
    assert all(t.device.type == "meta" for t in moved.buffers.values()) and moved.block_width == layout.block_width
    layer = RBGPLinear(128, 64, 0.75)
    assert set(layout.buffers) <= {name for name, _ in layer.named_buffers()}


# ---- dispatch, custom ops, autograd, torch.compile -------------------------------------------------------

def test_dispatch_choices(monkeypatch):
    assert resolve_backend("auto", torch.device("cpu")) == "grouped"
    assert resolve_backend("auto", torch.device("cuda"), torch.float16) == "triton"
    assert resolve_backend("auto", torch.device("cuda"), torch.float64) == "grouped"
    assert resolve_backend("triton", torch.device("cpu")) == "triton"  # TRITON_INTERPRET=1 here
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))


def test_layer_with_triton_backend_matches_grouped():
    torch.manual_seed(0)
    layer = RBGPLinear(48, 96, 0.5, backend="triton")
    x = torch.randn(2, 3, 48)
    y = layer(x)
    y.square().sum().backward()
    g_triton = layer.values.grad.clone()
    layer.values.grad = None
    layer.backend = "grouped"
    y_ref = layer(x)
    y_ref.square().sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(g_triton, layer.values.grad, atol=1e-4)


@pytest.mark.parametrize("op", ["fwd", "bwd_input", "bwd_values"])
def test_opcheck(tk, op):
    """Schema, fake kernel, autograd registration and AOT dispatch of each custom op."""
    layout = tk.make_layout(32, 48, 0.5, block=(1, 4), group_rows=8)
    x = torch.randn(5, 48, requires_grad=op == "fwd")
    v = torch.randn(layout.values_shape, requires_grad=op == "fwd")
    gy = torch.randn(5, 32)
    ri, cb, ce, bw = layout.row_index, layout.col_blocks, layout.col_entries, layout.block_width
    op_args = {"fwd": (O.grouped_linear_fwd, (x, v, ri, cb, ce, bw, "ieee")),
               "bwd_input": (O.grouped_linear_bwd_input, (gy, v, ri, ce, bw, 48, "ieee")),
               "bwd_values": (O.grouped_linear_bwd_values, (gy, x, ri, cb, bw, "ieee"))}
    fn, args = op_args[op]
    torch.library.opcheck(fn, args)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph(backend):
    """A small model with two RBGP layers traces as one graph (no graph breaks) and matches eager.
    (A real inductor compile needs a GPU: test_triton_gpu.py does it.)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(RBGPLinear(48, 32, 0.5, backend="triton"), torch.nn.ReLU(),
                                RBGPLinear(32, 16, 0.5, backend="triton"))
    x = torch.randn(4, 48)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.sum().backward()
    assert torch.allclose(y, y_eager)
    assert all(torch.allclose(a, p.grad) for a, p in zip(grads, model.parameters()))


# ---- the GPU compile path, without a GPU ------------------------------------------------------------------

_AOT_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from rbgp.ops import triton_kernels as K
    assert not K.INTERPRETED
    PTRS = {K.grouped_fwd_kernel: ("x_ptr", "v_ptr", "y_ptr", "rows_ptr", "cblk_ptr"),
            K.grouped_bwd_input_kernel: ("dy_ptr", "v_ptr", "dx_ptr", "rows_ptr", "ent_ptr"),
            K.grouped_bwd_values_kernel: ("dy_ptr", "x_ptr", "dv_ptr", "rows_ptr", "cblk_ptr")}
    TILES = {K.grouped_fwd_kernel: {"BLOCK_N": 64, "BLOCK_R": 32, "BLOCK_K": 32},
             K.grouped_bwd_input_kernel: {"BLOCK_N": 64, "BLOCK_C": 16, "BLOCK_R": 32},
             K.grouped_bwd_values_kernel: {"BLOCK_R": 32, "BLOCK_K": 32, "BLOCK_N": 64}}
    # 2-row groups of 9-wide (3x3 channel) blocks: tiles below 16 along R, so FMAs, no tensor cores
    SMALL = {K.grouped_fwd_kernel: {"BLOCK_N": 64, "BLOCK_R": 2, "BLOCK_K": 32},
             K.grouped_bwd_input_kernel: {"BLOCK_N": 64, "BLOCK_C": 16, "BLOCK_R": 2},
             K.grouped_bwd_values_kernel: {"BLOCK_R": 2, "BLOCK_K": 32, "BLOCK_N": 64}}
    for dt, prec, bw, tiles in (("fp16", "tf32", 16, TILES), ("bf16", "tf32", 4, TILES), ("fp32", "ieee", 16, TILES),
                                ("fp32", "tf32", 1, TILES), ("bf16", "tf32", 9, TILES), ("fp16", "tf32", 9, SMALL)):
        for fn, ptrs in PTRS.items():
            consts = {"BW": bw, "BW_ALIGN": bw & -bw, "INPUT_PRECISION": prec, "EMULATE_BF16": False, **tiles[fn]}
            sig = {a: ("constexpr" if a in consts else f"*{dt}" if a in ptrs[:3] else "*i32" if a in ptrs else "i32")
                   for a in fn.arg_names}
            k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": 4, "num_stages": 3})
            tensor_cores = "wgmma" in k.asm["ptx"] or "mma.sync" in k.asm["ptx"]
            expected = prec == "tf32" and tiles is TILES  # fp32 "ieee": FMA, no TF32; small tiles: FMA
            assert tensor_cores == expected, (fn.__name__, dt, prec, bw)
    print("compiled")
""")


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The real (non-interpreted) compile path down to PTX/cubin for an H100 (sm_90) with the bundled
    ptxas: catches what the interpreter cannot (constexpr folding, dot operand types, layouts). Tensor
    cores are used for 16-bit and "tf32", not for fp32 "ieee". Runs in a fresh process (no interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode and "No module named 'triton.backends.nvidia" in proc.stderr:
        pytest.skip("this triton build has no NVIDIA backend")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


def test_rbgp_conv_layer_on_triton_matches_dense_conv():
    from rbgp.nn import RBGPConv2d

    torch.manual_seed(0)
    layer = RBGPConv2d(8, 16, 3, stride=1, padding=1, sparsity=0.75, backend="triton")
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    y = layer(x)
    w = layer.dense_weight().detach().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.conv2d(xr, w, layer.bias, padding=1)
    assert torch.allclose(y, ref, atol=1e-4)
    y.sum().backward()
    ref.sum().backward()
    assert torch.allclose(x.grad, xr.grad, atol=1e-4)


# ---- convolutions: channel layouts (a block is one input channel's kh*kw taps), small row groups -----------

@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_channel_layouts_on_triton(tk, dtype, conv_case):
    """Channel layouts (a block is one input channel's kh*kw taps) with 2- to 16-row groups."""
    tk.check_conv(conv_case, "cpu", dtype)


def test_small_row_groups_are_not_padded_to_16():
    """2-row groups launch 2-row tiles (FMA path), not 16-row tl.dot tiles."""
    from rbgp.nn import RBGPConv2d

    layer = RBGPConv2d(16, 16, 3, padding=1, sparsity=0.75, backend="triton")
    assert layer.values.shape[1] == 2 and layer.block_width == 9
    layer(torch.randn(2, 16, 4, 4, requires_grad=True)).sum().backward()
    assert L._fwd.best_config.kwargs["BLOCK_R"] == 2
    assert L._bwd_values.best_config.kwargs["BLOCK_R"] == 2
    assert L._bwd_input.best_config.kwargs["BLOCK_R"] == 2
