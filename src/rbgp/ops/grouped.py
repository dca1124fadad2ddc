"""The generic torch path: gather the inputs each group reads, then one batched GEMM.

Every group of R rows shares its K input columns, so the sparse product is G dense (R x K) GEMMs:
y[:, rows_g] = x[:, cols_g] @ V_g^T. On CPU this runs at dense-GEMM efficiency on the non-zeros
(oneDNN/MKL batched GEMM) at a cost of one gather of the input; any torch device works.
Backward: grad-input is the same GEMMs transposed plus one scatter-add; grad-weight is computed
on the non-zeros only, from the gathered input kept by the forward pass.
"""

from __future__ import annotations

import torch

from rbgp.ops.layout import LayoutTensors


def _feature_major(t: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (F, N) contiguous; free when `t` is itself a transposed view, as our outputs are."""
    return t.t().contiguous()


def gather_inputs(x: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
    """(N, in) -> (G, K, N): the input rows (features) each group reads, feature-major."""
    g, k = col_index.shape
    return _feature_major(x).index_select(0, col_index.reshape(-1)).view(g, k, x.shape[0])


def _grouped_grad(grad_y: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """(N, out) -> (G, R, N): the output gradient of every group, feature-major."""
    g, r = layout.row_index.shape
    return _feature_major(grad_y).index_select(0, layout.row_index.reshape(-1)).view(g, r, grad_y.shape[0])


def grouped_forward(x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """y (N, out) and the gathered input (G, K, N) that backward reuses.

    Activations are kept feature-major: y is returned as the transposed view of an (out, N) buffer,
    so the next layer's gather reads whole contiguous rows.
    """
    xg = gather_inputs(x, layout.col_index)
    yg = torch.bmm(values, xg)  # (G, R, N)
    y = yg.view(-1, x.shape[0]).index_select(0, layout.row_order)
    return y.t(), xg


def grouped_grad_input(grad_y: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """dx (N, in) = dy W, accumulated from every group's dense block (feature-major view)."""
    n = grad_y.shape[0]
    dxg = torch.bmm(values.transpose(1, 2), _grouped_grad(grad_y, layout))  # (G, K, N)
    dxt = grad_y.new_zeros(layout.in_features, n)
    return dxt.index_add_(0, layout.col_index.reshape(-1), dxg.view(-1, n)).t()


def grouped_grad_values(grad_y: torch.Tensor, xg: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """dV (G, R, K) = dy_g^T x_g: the weight gradient on the non-zeros only."""
    return torch.bmm(_grouped_grad(grad_y, layout), xg.transpose(1, 2))


class GroupedLinearFunction(torch.autograd.Function):
    """y = x W^T for a grouped-sparse W given as (G, R, K) values; x is 2-D (N, in)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
        y, xg = grouped_forward(x, values, layout)
        ctx.save_for_backward(values, xg if values.requires_grad else None)
        ctx.layout = layout
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        values, xg = ctx.saved_tensors
        dx = grouped_grad_input(grad_y, values, ctx.layout) if ctx.needs_input_grad[0] else None
        dv = grouped_grad_values(grad_y, xg, ctx.layout) if ctx.needs_input_grad[1] else None
        return dx, dv, None
