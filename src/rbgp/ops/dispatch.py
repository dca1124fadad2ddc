"""Dispatch of the linear product: the reference, the grouped torch path or the Triton kernels
(convolutions: `rbgp.ops.conv`, which runs its im2col path through here)."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import nullcontext

import torch

from rbgp.ops.autocast import autocast_inputs
from rbgp.ops.finite import nonfinite_rows, surely_finite
from rbgp.ops.grouped import grouped_forward, grouped_linear
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.native import batch_limit, eager_linear, grouped_small, native_applies
from rbgp.ops.reference import reference_linear
from rbgp.ops.weight import SparseWeight

BACKENDS = ("auto", "reference", "grouped", "triton")

# whether triton is installed, checked without importing it (the kernels import it lazily)
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend `auto` stands for on `device` (and `dtype`), or `backend` itself after validation.

    auto: the Triton kernels for CUDA fp16/bf16/fp32 tensors when triton is installed, else the grouped
    torch path ("grouped": on the CPU, batches of up to `rbgp.ops.native.batch_limit` rows that need no
    gradient run on the native kernel where it is available).
    triton: CUDA tensors, or CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, slow, for tests).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    if backend == "auto":
        fast = device.type == "cuda" and HAS_TRITON and (dtype is None or dtype in TRITON_DTYPES)
        return "triton" if fast else "grouped"
    if backend == "triton":
        if not HAS_TRITON:
            raise ValueError("backend 'triton' needs the triton package (pip install 'rbgp[triton]')")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "backend 'triton' got CPU tensors; it runs on CUDA, or on the CPU only under "
                "Triton's interpreter (set TRITON_INTERPRET=1 before importing triton)"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend 'triton' runs on CUDA tensors, got {device.type} tensors")
    return backend


def rbgp_linear(
    x: torch.Tensor,
    weight: SparseWeight,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
    *,
    im2col: bool = False,
) -> torch.Tensor:
    """y = x W^T + b for the grouped-sparse `weight`; x may have any leading dims.

    Under torch.autocast the GEMM inputs are cast to the autocast dtype (bf16: fp32 master weights,
    low-precision GEMM inputs, fp32 accumulation inside the GEMM). bf16 values with fp32 inputs outside
    autocast are stored weights (`rbgp.nn.store_values_`), and so are int8 values with their per-row
    scales: widened to fp32 in registers by the native kernel, or once per call for the other paths;
    the output is fp32.

    im2col: x is a conv's im2col matrix and the conv makes the output contiguous and flags inf/NaN
    windows itself; the output may then be the transposed view of a feature-major product.
    """
    values, layout = weight.values, weight.layout
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"input has {x.shape[-1]} features in its last dim, the layer expects {layout.in_features}")
    if values.shape != layout.values_shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match the layout {layout.values_shape}")
    if backend in ("auto", "grouped"):
        y = eager_linear(x, values, layout, weight.scales, bias)
        if y is not None:
            return y
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    scales = None
    stored = values.dtype in (torch.bfloat16, torch.int8) and x.dtype == torch.float32
    if stored and not torch.is_autocast_enabled(x.device.type):
        # stored bf16/int8 values: the native kernel widens them in registers, every other path takes fp32
        compiled = torch.compiler.is_compiling()  # any batch may take the kernel: see `_native_in_graph`
        if (
            backend in ("auto", "grouped")
            and native_applies(x2, values, any_batch=compiled, im2col=im2col)
            and not _exporting()
        ):
            scales = weight.scales
        else:
            values = weight.float_values(torch.float32)
    else:
        values = weight.float_values() if values.dtype == torch.int8 else values
        x, values, bias = autocast_inputs(x, values, bias)
        x2 = x.reshape(-1, x.shape[-1])
    kind = resolve_backend(backend, x.device, x.dtype)
    with torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext():
        finished = False  # whether y is the output already (the native kernel adds bias and flags itself)
        if kind == "reference":
            y = reference_linear(x2, values, layout)
        elif kind == "triton":
            from rbgp.ops.triton_ops import triton_linear

            y = triton_linear(x2, values, layout)
        else:
            y, finished = _grouped(x2, weight, values, scales, bias, im2col)
        if not finished:
            y = _as_dense_linear(y, layout.out_features, None if im2col else x2, bias)
    if x.dim() == 2:
        return y
    # not a view, as F.linear's output (an in-place op on a view would bypass FSDP2's backward hooks)
    return torch.ops.aten._unsafe_view(y, (*lead, layout.out_features))


TRAIN_DENSE_ROWS = 16
"""Row groups of fewer rows train on the CPU (a gradient wanted, fp32) on the masked dense weight: the
batched GEMMs of such short groups are slower than one dense GEMM, forward and backward
(`benchmarks/train_small_groups.md`)."""
TRAIN_DENSE_MAX_ROWS, TRAIN_DENSE_DENSITY = 64, 0.25
"""So do groups of up to TRAIN_DENSE_MAX_ROWS rows at densities of TRAIN_DENSE_DENSITY or more, where the
grouped product does too little less work to make up for its short GEMMs (same file)."""


def trains_masked_dense(x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> bool:
    """Whether this call, which wants a gradient, runs as the dense product of the masked weight (see
    TRAIN_DENSE_ROWS): a static fact of the layout's shape, for fp32 CPU calls only."""
    if not (torch.is_grad_enabled() and (x.requires_grad or values.requires_grad)):
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or values.dtype != torch.float32:
        return False
    rows, density = layout.row_index.shape[1], layout.col_index.shape[1] / layout.in_features
    return rows < TRAIN_DENSE_ROWS or (rows <= TRAIN_DENSE_MAX_ROWS and density >= TRAIN_DENSE_DENSITY)


def _grouped(
    x: torch.Tensor,
    weight: SparseWeight,
    values: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
    feature_major_out: bool = False,
) -> tuple[torch.Tensor, bool]:
    """(y, finished) on the native kernel or the batched GEMMs; finished: y is the layer's output
    already (the kernel added the bias and the non-finite flags, dropped the padding rows). Compiled,
    the choice between the two is made when the graph runs (`torch.cond`), never by a guard on the batch."""
    layout = weight.layout
    if torch.jit.is_tracing():  # the legacy ONNX exporter: plain traceable ops, no custom autograd node
        return grouped_forward(x, values, layout), False
    fused = bias is None or (bias.dtype == torch.float32 and not (bias.requires_grad and torch.is_grad_enabled()))
    if not torch.compiler.is_compiling():
        if fused and native_applies(x, values, im2col=feature_major_out):
            return grouped_small(x, values, layout, scales, bias), True
        if not feature_major_out and trains_masked_dense(x, values, layout):
            return reference_linear(x, values, layout), False
        wide = weight.float_values(x.dtype) if values.dtype != x.dtype else values
        return grouped_linear(x, wide, layout, feature_major_out), False
    if not _native_in_graph(x, values):
        return grouped_linear(x, values, layout), False
    limit = batch_limit(values, feature_major_out)
    if limit == sys.maxsize:
        return grouped_small(x, values, layout, scales), False
    wide = values if values.dtype == x.dtype else weight.float_values(x.dtype)
    y = torch.cond(
        x.shape[0] <= limit,
        lambda a, v, w: grouped_small(a, v, layout, scales),
        lambda a, v, w: grouped_linear(a, w, layout)[:, : layout.out_features].contiguous(),
        (x, values, wide),
    )
    return y, False


def _native_in_graph(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether a compiled graph takes the native kernel for its small batches: not in an exported
    program (which must run without rbgp, e.g. in ONNX), only where the kernel would run eagerly."""
    return not _exporting() and native_applies(x, values, any_batch=True)


def _exporting() -> bool:
    return torch.compiler.is_compiling() and torch.compiler.is_exporting()


def _as_dense_linear(
    y: torch.Tensor, out_features: int, x: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """The output as nn.Linear gives it: the padding rows dropped, contiguous, the bias added, and a
    sample with an inf or NaN input NaN in every row, as the dense product of the densified weight is
    (its zeros times inf or NaN). x None: an im2col conv's product, left in its layout and unflagged
    (the conv does both)."""
    if y.shape[1] != out_features:
        y = y[:, :out_features]  # drop the padding rows (its backward pads with zeros)
    if x is not None:
        y = y.contiguous()
        if not surely_finite(x):
            flags = nonfinite_rows(x).to(y.dtype)  # 0, or NaN where a sample has an inf or NaN
            y = y + flags if y.requires_grad else y.add_(flags)
    if bias is None:
        return y
    return y + bias if y.requires_grad or bias.requires_grad else y.add_(bias)
