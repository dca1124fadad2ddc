"""torch.library custom ops over the Triton launchers, with fake kernels and autograd.

Three ops, each opaque to torch.compile (traced through its fake kernel, so a model that calls them
compiles with no graph break):

- `rbgp::grouped_linear_fwd(x, values, row_index, col_blocks, col_entries, block_width, input_precision)`
  -> y (N, G*R)
- `rbgp::grouped_linear_bwd_input(grad_y, values, row_index, col_entries, block_width, in_features,
  input_precision)` -> dx
- `rbgp::grouped_linear_bwd_values(grad_y, x, row_index, col_blocks, block_width, input_precision)` -> dV

They take the layer's layout tables as they are (`LayoutTensors`, built once per layer). Autograd is
registered on the forward op, so `grouped_linear_fwd` is differentiable in x and values by itself. y
comes out in feature order: the forward kernel writes group row (g, r) straight to output column
row_index[g, r]. y and dx are feature-major (transposed views of (features, N) buffers), like the
grouped torch path's outputs.
"""

from __future__ import annotations

import torch

from rbgp.ops import triton_launch as L
from rbgp.ops.layout import LayoutTensors


@torch.library.custom_op("rbgp::grouped_linear_fwd", mutates_args=())
def grouped_linear_fwd(
    x: torch.Tensor,
    values: torch.Tensor,
    row_index: torch.Tensor,
    col_blocks: torch.Tensor,
    col_entries: torch.Tensor,
    block_width: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """y (N, out) = x W^T for the grouped-sparse W = (values, layout tables)."""
    if x.dim() != 2 or -(-x.shape[1] // block_width) != col_entries.shape[0]:
        raise ValueError(
            f"x {tuple(x.shape)} does not have the layer's input width: the layout has "
            f"{col_entries.shape[0]} input blocks of {block_width} columns"
        )
    return L.grouped_forward(x, values, row_index, col_blocks, block_width, input_precision)


@grouped_linear_fwd.register_fake
def _(x, values, row_index, col_blocks, col_entries, block_width, input_precision="ieee"):
    torch._check(values.shape[0] == row_index.shape[0] and values.shape[1] == row_index.shape[1])
    return x.new_empty(row_index.shape[0] * row_index.shape[1], x.shape[0]).t()


@torch.library.custom_op("rbgp::grouped_linear_bwd_input", mutates_args=())
def grouped_linear_bwd_input(
    grad_y: torch.Tensor,
    values: torch.Tensor,
    row_index: torch.Tensor,
    col_entries: torch.Tensor,
    block_width: int,
    in_features: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """dx (N, in) = dy W."""
    return L.grouped_grad_input(grad_y, values, row_index, col_entries, block_width, in_features, input_precision)


@grouped_linear_bwd_input.register_fake
def _(grad_y, values, row_index, col_entries, block_width, in_features, input_precision="ieee"):
    return grad_y.new_empty(in_features, grad_y.shape[0]).t()


@torch.library.custom_op("rbgp::grouped_linear_bwd_values", mutates_args=())
def grouped_linear_bwd_values(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    row_index: torch.Tensor,
    col_blocks: torch.Tensor,
    block_width: int,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """dV (G, R, K) = dy^T x on the non-zeros only."""
    return L.grouped_grad_values(grad_y, x, row_index, col_blocks, block_width, input_precision)


@grouped_linear_bwd_values.register_fake
def _(grad_y, x, row_index, col_blocks, block_width, input_precision="ieee"):
    return x.new_empty(row_index.shape[0], row_index.shape[1], col_blocks.shape[1] * block_width)


def _setup_context(ctx, inputs, output) -> None:
    x, values, row_index, col_blocks, col_entries, block_width, input_precision = inputs
    ctx.save_for_backward(x, values, row_index, col_blocks, col_entries)
    ctx.block_width, ctx.input_precision = block_width, input_precision


def _backward(ctx, grad_y: torch.Tensor):
    x, values, row_index, col_blocks, col_entries = ctx.saved_tensors
    grad_y = grad_y.to(x.dtype)
    dx = dv = None
    if ctx.needs_input_grad[0]:
        dx = grouped_linear_bwd_input(
            grad_y, values, row_index, col_entries, ctx.block_width, x.shape[1], ctx.input_precision
        )
    if ctx.needs_input_grad[1]:
        dv = grouped_linear_bwd_values(grad_y, x, row_index, col_blocks, ctx.block_width, ctx.input_precision)
    return dx, dv, None, None, None, None, None


grouped_linear_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_linear(
    x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, input_precision: str = "ieee"
) -> torch.Tensor:
    """y (N, out) = x W^T on the Triton kernels, differentiable in x and values; x is 2-D (N, in).

    input_precision applies to fp32 only: "ieee" (default, exact fp32 products, like cuBLAS with TF32
    off), "tf32" or "tf32x3" (tensor cores, faster, ~1e-3 relative error for "tf32").
    """
    return grouped_linear_fwd(
        x, values, layout.row_index, layout.col_blocks, layout.col_entries, layout.block_width, input_precision
    )
