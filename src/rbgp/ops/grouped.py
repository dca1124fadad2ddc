"""The generic torch path: gather the inputs each group reads, then batched GEMMs.

Every group of R rows shares its K input columns, so the sparse product is G dense (R x K) GEMMs:
y[:, rows_g] = x[:, cols_g] @ V_g^T. Activations are handled feature-major ((features, N), so a
gather copies whole contiguous rows) and groups are processed in chunks whose gathered inputs fit in
cache (~2 MB): one big gathered buffer would cost more in memory traffic and page faults than the
GEMMs themselves. Backward: grad-input is the same GEMMs transposed plus a scatter-add, grad-weight
is computed on the non-zeros only; both re-gather the input chunk instead of keeping G*K*N values.
"""

from __future__ import annotations

import torch

from rbgp.ops.layout import LayoutTensors

CHUNK_BYTES = 2 << 20


def feature_major(t: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (F, N) contiguous; free when `t` is itself a transposed view, as our outputs are."""
    return t.t().contiguous()


def _chunks(layout: LayoutTensors, n: int, itemsize: int) -> list[slice]:
    g, k = layout.col_index.shape
    per = max(1, CHUNK_BYTES // max(1, k * n * itemsize))
    return [slice(s, min(s + per, g)) for s in range(0, g, per)]


def grouped_forward(xt: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """yt (out, N) = W x for feature-major xt (in, N)."""
    n = xt.shape[1]
    g, r, _ = values.shape
    yg = xt.new_empty(g, r, n)  # group-major rows
    for c in _chunks(layout, n, xt.element_size()):
        cols = layout.col_index[c]
        xg = xt.index_select(0, cols.reshape(-1)).view(cols.shape[0], cols.shape[1], n)
        torch.bmm(values[c], xg, out=yg[c])
    return yg.view(g * r, n).index_select(0, layout.row_order)


def grouped_backward(dyt: torch.Tensor, xt: torch.Tensor, values: torch.Tensor, layout: LayoutTensors,
                     need_input: bool = True, need_values: bool = True):
    """(dxt (in, N) or None, dV (G, R, K) or None) from feature-major dyt (out, N) and xt (in, N)."""
    n = xt.shape[1]
    dxt = xt.new_zeros(layout.in_features, n) if need_input else None
    dv = torch.empty_like(values) if need_values else None
    for c in _chunks(layout, n, xt.element_size()):
        rows, cols = layout.row_index[c], layout.col_index[c]
        dyg = dyt.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1], n)  # (cs, R, N)
        if need_values:
            xg = xt.index_select(0, cols.reshape(-1)).view(cols.shape[0], cols.shape[1], n)
            torch.bmm(dyg, xg.transpose(1, 2), out=dv[c])
        if need_input:
            dxg = torch.bmm(values[c].transpose(1, 2), dyg)  # (cs, K, N)
            dxt.index_add_(0, cols.reshape(-1), dxg.view(cols.numel(), n))
    return dxt, dv


class GroupedLinearFunction(torch.autograd.Function):
    """y = x W^T for a grouped-sparse W given as (G, R, K) values; x is 2-D (N, in).

    The output is the transposed view of a feature-major (out, N) buffer, so stacked layers hand
    each other feature-major activations without copies.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
        xt = feature_major(x)
        ctx.save_for_backward(xt, values)
        ctx.layout = layout
        return grouped_forward(xt, values, layout).t()

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        xt, values = ctx.saved_tensors
        dxt, dv = grouped_backward(feature_major(grad_y), xt, values, ctx.layout,
                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (dxt.t() if dxt is not None else None), dv, None
