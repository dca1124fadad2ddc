"""The generic torch path: gather the inputs each group reads, then batched GEMMs.

Every group of R rows shares its K input columns, so the sparse product is G dense (R x K) GEMMs:
y[:, rows_g] = x[:, cols_g] @ V_g^T. Outputs are row-major and contiguous, as nn.Linear's. Inputs are
gathered in chunks of groups whose gathered inputs fit in cache (~2 MB): a row-major input with
micro-blocks of ROW_GATHER_MIN_WIDTH columns or more has its (N x BW) micro-blocks gathered as rows
of BW values (`gather_rows`, in few big chunks; the index of that gather is kept in the layout's
workspace), any other input is made feature-major once and its rows gathered whole
(`benchmarks/linear_fixed_costs.md` times both against the pieces). Each chunk's products are
copied into their rows while in cache: through a strided view when the rows run group by group
(convs) or interleaved (row g + r * G: every RBGP4 linear plan), by index otherwise. Without a
gradient to compute no autograd node is built. Backward: grad-input is the same GEMMs transposed
plus a scatter-add, grad-weight is computed on the non-zeros only, from the input re-gathered the
way the forward gathered it (instead of keeping G*K*N values); for those two row orders the output
gradient is read group-major from one feature-major copy.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from rbgp.ops.layout import LayoutTensors
from rbgp.ops.workspace import Workspace, tensor_bytes

CHUNK_BYTES = 2 << 20
ROW_CHUNK_BYTES = 16 << 20  # the micro-block gather runs best in few big calls
ROW_GATHER_MIN_WIDTH = 8
COMPILED_BATCH = 64  # the batch chunks are sized for in a compiled graph, which serves all batches


def feature_major(t: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (F, N) contiguous; free when `t` is itself a transposed view (im2col's columns)."""
    return t.t().contiguous()


def gather_rows(table: torch.Tensor, index: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """table[index] for a 2-D table. fp32 rows on the CPU go through FBGEMM's embedding kernel
    (embedding_bag, one row per bag), which copies short rows (a 16-column micro-block is 64 bytes)
    about twice as fast as index_select's per-row loop (`benchmarks/linear_fixed_costs.md`); other
    dtypes, where that kernel is not faster, use index_select. A -0.0 comes back as +0.0 (the bag
    sums from 0). The bags' offsets are kept in `workspace` when one is given."""
    if table.dtype == torch.float32 and table.device.type == "cpu":
        return F.embedding_bag(
            index, table, _bag_offsets(index.numel(), index.dtype, index.device, workspace), mode="sum"
        )
    return table.index_select(0, index)


def _bag_offsets(count: int, dtype: torch.dtype, device: torch.device, workspace: Workspace | None) -> torch.Tensor:
    """arange(count): a slice of a kept arange of the next power of two, instead of a new one per call."""
    if workspace is None or torch.compiler.is_compiling():  # no Python arithmetic on a symbolic batch
        return torch.arange(count, dtype=dtype, device=device)
    size = 1 << max(0, count - 1).bit_length()
    return workspace.get(
        "offsets", (dtype, device, size), lambda: torch.arange(size, dtype=dtype, device=device), tensor_bytes
    )[:count]


def _block_index(layout: LayoutTensors, c: slice, n: int, per_row: int, device: torch.device) -> torch.Tensor:
    """Rows of the (N * in / BW, BW) micro-block view that groups `c` read, sample by sample: sample
    i's block j is row i * per_row + j; int32 where it fits, half the bytes of int64. Kept in the
    layout's workspace for its last batch size (building it is a measurable share of a forward:
    `benchmarks/linear_fixed_costs.md`)."""

    def build() -> torch.Tensor:
        small = not torch.compiler.is_compiling() and n * per_row < 2**31  # no guard on a symbolic batch
        dtype = torch.int32 if small else torch.int64
        first = torch.arange(0, n * per_row, per_row, dtype=dtype, device=device)[:, None]
        return (first + layout.col_blocks[c].to(device).reshape(1, -1)).reshape(-1)

    if layout.workspace is None:
        return build()
    return layout.workspace.get(f"block_index {c.start}", (c.stop, n, per_row, device), build, tensor_bytes)


def _chunks(layout: LayoutTensors, n: int, itemsize: int, limit: int | None = None) -> list[slice]:
    """Slices of groups whose gathered inputs fit in `limit` bytes (default CHUNK_BYTES), at least one group
    each. Under torch.compile/export the batch is taken as COMPILED_BATCH, so that no guard on it
    enters the graph (one graph serves every batch size)."""
    g, k = layout.col_index.shape
    limit = CHUNK_BYTES if limit is None else limit
    n = COMPILED_BATCH if torch.compiler.is_compiling() else n
    per = max(1, limit // max(1, k * n * itemsize))
    return [slice(s, min(s + per, g)) for s in range(0, g, per)]


def _gathered_inputs(
    x: torch.Tensor, layout: LayoutTensors, gather: bool = True
) -> Iterator[tuple[slice, torch.Tensor | None]]:
    """(groups c, the (cs, K, N) inputs they read) chunk by chunk, for x (N, in): micro-blocks of a
    row-major x gathered as rows (a strided view), rows of a feature-major x gathered whole
    (contiguous). With gather=False only the chunks (and None)."""
    n = x.shape[0]
    k, bw = layout.col_index.shape[1], layout.block_width
    if x.is_contiguous() and bw >= ROW_GATHER_MIN_WIDTH and x.shape[1] % bw == 0:
        blocks = x.view(-1, bw)  # row n's micro-block j is blocks[n * in / bw + j]
        per_row = x.shape[1] // bw
        for c in _chunks(layout, n, x.element_size(), ROW_CHUNK_BYTES):
            xg = (
                gather_rows(blocks, _block_index(layout, c, n, per_row, x.device), layout.workspace) if gather else None
            )
            yield c, (xg.view(n, c.stop - c.start, k).permute(1, 2, 0) if xg is not None else None)
    else:
        xt = feature_major(x) if gather else None
        for c in _chunks(layout, n, x.element_size()):
            cols = layout.col_index[c]
            yield c, (xt.index_select(0, cols.reshape(-1)).view(cols.shape[0], k, n) if xt is not None else None)


def _group_major(yt: torch.Tensor, layout: LayoutTensors) -> torch.Tensor | None:
    """The (G, R, N) view of a feature-major (G*R, N) buffer in row order, or None (see `detect_row_strides`)."""
    strides = layout.row_strides
    if strides is None or torch.compiler.is_compiling():  # dynamo does not trace as_strided views of new buffers
        return None
    n = yt.shape[1]
    return yt.as_strided((*layout.row_index.shape, n), (strides[0] * n, strides[1] * n, 1), yt.storage_offset())


def _groups_of_rows(y: torch.Tensor, layout: LayoutTensors) -> torch.Tensor | None:
    """The (G, N, R) view of a row-major (N, G*R) output, group by group, or None (see `detect_row_strides`)."""
    strides = layout.row_strides
    if strides is None or torch.compiler.is_compiling():
        return None
    g, r = layout.row_index.shape
    return y.as_strided((g, y.shape[0], r), (strides[0], y.shape[1], strides[1]), y.storage_offset())


def grouped_forward(
    x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, feature_major_out: bool = False
) -> torch.Tensor:
    """y (N, G*R) = x W^T, row-major, for x (N, in) row-major or a transposed view of a feature-major
    buffer. Each chunk of groups is one batched GEMM, (cs, N, K) @ (cs, K, R), whose products are
    copied into their rows while in cache. `feature_major_out`: y is instead the transposed view of a
    feature-major (G*R, N) product, (cs, R, K) @ (cs, K, N) per chunk, rows in order (an im2col conv's
    output: its channel planes are then made contiguous plane by plane)."""
    g, r, _ = values.shape
    n = x.shape[0]
    if feature_major_out:
        yg = x.new_empty(g, r, n)
        for c, xg in _gathered_inputs(x, layout):
            assert xg is not None  # gather=True
            torch.bmm(values[c], xg, out=yg[c])
        return yg.view(g * r, n).index_select(0, layout.row_order).t()
    y = x.new_empty(n, g * r)
    groups = _groups_of_rows(y, layout)
    for c, xg in _gathered_inputs(x, layout):
        assert xg is not None  # gather=True
        p = torch.bmm(xg.transpose(1, 2), values[c].transpose(1, 2))  # (cs, N, R)
        if groups is not None:
            groups[c].copy_(p)
        else:
            y.index_copy_(1, layout.row_index[c].reshape(-1), p.transpose(0, 1).reshape(n, -1))
    return y


def grouped_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    values: torch.Tensor,
    layout: LayoutTensors,
    need_input: bool = True,
    need_values: bool = True,
):
    """(dxt (in, N) or None, dV (G, R, K) or None) from grad_y (N, out) and x (N, in), each row-major
    or the transposed view of a feature-major buffer. Rows in order or interleaved read grad_y group-major
    in place (after one copy when it is row-major); x is re-gathered as the forward gathered it."""
    n = x.shape[0]
    dyt = feature_major(grad_y)
    dy_groups = _group_major(dyt, layout)
    dxt = x.new_zeros(layout.in_features, n) if need_input else None
    dv = torch.empty_like(values) if need_values else None
    for c, xg in _gathered_inputs(x, layout, gather=need_values):
        if dy_groups is not None:
            dyg = dy_groups[c]  # (cs, R, N) with unit stride along N: a GEMM operand as it is
        else:
            rows = layout.row_index[c]
            dyg = dyt.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1], n)
        if need_values:
            assert xg is not None and dv is not None  # gathered and allocated when need_values
            torch.bmm(dyg, xg.transpose(1, 2), out=dv[c])
        if dxt is not None:  # need_input
            cols = layout.col_index[c]
            dxg = torch.bmm(values[c].transpose(1, 2), dyg)  # (cs, K, N)
            dxt.index_add_(0, cols.reshape(-1), dxg.view(cols.numel(), n))
    return dxt, dv


class GroupedLinearFunction(torch.autograd.Function):
    """y = x W^T for a grouped-sparse W given as (G, R, K) values; x is 2-D (N, in).

    The output is row-major and contiguous (N, G*R), padding rows included (with `feature_major_out`: the
    transposed view of a feature-major product, see `grouped_forward`).
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, feature_major_out: bool = False
    ) -> torch.Tensor:
        ctx.save_for_backward(x, values)
        ctx.layout = layout
        return grouped_forward(x, values, layout, feature_major_out)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, values = ctx.saved_tensors
        dxt, dv = grouped_backward(grad_y, x, values, ctx.layout, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (dxt.t() if dxt is not None else None), dv, None, None


def grouped_linear(
    x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, feature_major_out: bool = False
) -> torch.Tensor:
    """`GroupedLinearFunction.apply`, or the bare forward when no gradient is wanted: inference then
    skips building an autograd node, a measurable share of a batch-1 forward
    (`benchmarks/linear_fixed_costs.md`)."""
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad):
        return GroupedLinearFunction.apply(x, values, layout, feature_major_out)
    return grouped_forward(x, values, layout, feature_major_out)
