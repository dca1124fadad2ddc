"""The generic torch path: gather the inputs each group reads, then batched GEMMs.

Every group of R rows shares its K input columns, so the sparse product is G dense (R x K) GEMMs:
y[:, rows_g] = x[:, cols_g] @ V_g^T. Outputs are feature-major ((features, N), handed on as a
transposed view), and an input that comes from another RBGP layer is one: its gather copies whole
contiguous rows, in chunks whose gathered inputs fit in cache (~2 MB). A row-major input with
micro-blocks of ROW_GATHER_MIN_WIDTH columns or more is not transposed first: its (N x BW)
micro-blocks are gathered as rows of BW values, in few big chunks, and the GEMM reads them
transposed (`benchmarks/linear_fixed_costs.md` times both against the pieces). Backward: grad-input
is the same GEMMs transposed plus a scatter-add, grad-weight is computed on the non-zeros only; both
re-gather the input chunk instead of keeping G*K*N values.
"""

from __future__ import annotations

import torch

from rbgp.ops.layout import LayoutTensors

CHUNK_BYTES = 2 << 20
ROW_CHUNK_BYTES = 16 << 20  # the micro-block gather runs best in few big calls
ROW_GATHER_MIN_WIDTH = 8


def feature_major(t: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (F, N) contiguous; free when `t` is itself a transposed view, as our outputs are."""
    return t.t().contiguous()


def _chunks(layout: LayoutTensors, n: int, itemsize: int, limit: int | None = None) -> list[slice]:
    """Slices of groups whose gathered inputs fit in `limit` bytes (default CHUNK_BYTES), at least one group each."""
    g, k = layout.col_index.shape
    limit = CHUNK_BYTES if limit is None else limit
    per = max(1, limit // max(1, k * n * itemsize))
    return [slice(s, min(s + per, g)) for s in range(0, g, per)]


def grouped_forward(x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """yt (out, N) = W x^T for x (N, in), row-major or a transposed view of a feature-major buffer."""
    n = x.shape[0]
    g, r, k = values.shape
    yg = x.new_empty(g, r, n)  # group-major rows
    bw = layout.block_width
    if x.is_contiguous() and bw >= ROW_GATHER_MIN_WIDTH and x.shape[1] % bw == 0:
        blocks = x.view(-1, bw)  # row n's micro-block j is blocks[n * in / bw + j]
        per_row = x.shape[1] // bw  # int32 indices where they fit: half the index bytes to build and read
        index_type = torch.int32 if blocks.shape[0] < 2 ** 31 else torch.int64
        first = torch.arange(0, n * per_row, per_row, dtype=index_type, device=x.device)[:, None]
        for c in _chunks(layout, n, x.element_size(), ROW_CHUNK_BYTES):
            xg = blocks.index_select(0, (first + layout.col_blocks[c].reshape(1, -1)).reshape(-1))
            torch.bmm(values[c], xg.view(n, c.stop - c.start, k).permute(1, 2, 0), out=yg[c])
    else:
        xt = feature_major(x)
        for c in _chunks(layout, n, x.element_size()):
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
        ctx.save_for_backward(x, values)
        ctx.layout = layout
        return grouped_forward(x, values, layout).t()

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, values = ctx.saved_tensors
        dxt, dv = grouped_backward(feature_major(grad_y), feature_major(x), values, ctx.layout,
                                   ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (dxt.t() if dxt is not None else None), dv, None
