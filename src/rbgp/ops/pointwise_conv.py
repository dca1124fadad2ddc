"""1x1 RBGP convolutions as grouped matmuls on the NCHW input, a few samples at a time.

A 1x1 conv is a matmul over channels at every pixel: group g's R output channels are V_g (R x K) times
its K input channels. Taken a few samples at a time (about CHUNK_BYTES of gathered input and output),
each chunk's channels are gathered channel-major, (G*K, n, H*W), so that every group is one GEMM over
all the chunk's pixels, and the outputs are copied into the NCHW result while still in cache: no
im2col transpose of the whole input, no gathered copy of it in memory, no feature-major output (the
im2col path's). The backward runs chunk by chunk too, re-gathering the input chunk rather than keeping
it: grad-values is the sum of the per-chunk GEMMs, grad-input the transposed GEMMs plus an `index_add`
over channel planes. Measured against the im2col path and dense in `benchmarks/pointwise_conv.md`:
faster at stride 1, slower than im2col at stride 2 (which `RBGPConv2d` therefore keeps on im2col).
"""

from __future__ import annotations

import torch

from rbgp.ops.autocast import autocast_inputs

CHUNK_BYTES = 2 << 20


def samples_per_chunk(n: int, per_sample_bytes: int) -> int:
    """How many samples one chunk takes: as many as fit in CHUNK_BYTES, at least one; all of them under
    torch.compile/export, so that no guard on the batch enters the graph."""
    if torch.compiler.is_compiling():
        return n
    return max(1, min(n, CHUNK_BYTES // max(1, per_sample_bytes)))


class PointwiseConvFunction(torch.autograd.Function):
    """y = conv1x1(x, W) + b (stride 1, no padding) for the grouped-sparse W = (G, R, K) `values` whose
    group g reads input channels `channels[g * K:(g + 1) * K]` and writes output channels
    `rows[g * R:(g + 1) * R]` (ids from `out_channels` on are padding rows, computed and dropped);
    `order` (out_channels,) gives each output channel's group-major position, None when that is the
    identity and there are no padding rows."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        channels: torch.Tensor,
        rows: torch.Tensor,
        order: torch.Tensor | None,
        out_channels: int,
    ) -> torch.Tensor:
        g, r, k = values.shape
        n, _, oh, ow = x.shape
        y = x.new_empty(n, out_channels, oh, ow)
        rows_of = y.view(n, out_channels, oh * ow)
        step = samples_per_chunk(n, (g * k + g * r) * oh * ow * x.element_size())
        for s in range(0, n, step):
            xg = x[s : s + step].transpose(0, 1).index_select(0, channels)  # (G*K, n, oh, ow)
            yg = torch.bmm(values, xg.view(g, k, -1)).view(g * r, -1, oh * ow)
            yg = yg[:out_channels] if order is None else yg.index_select(0, order)
            if bias is not None:
                yg += bias.view(-1, 1, 1)
            rows_of[s : s + step].copy_(yg.transpose(0, 1))
        ctx.save_for_backward(x, values, channels, rows)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, values, channels, rows = ctx.saved_tensors
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        g, r, k = values.shape
        n, c_in, oh, ow = x.shape
        c_out = dy.shape[1]
        padding = (rows >= c_out).nonzero().view(-1)  # group-major positions of padding rows: zero gradients
        real_rows = rows.clamp(max=c_out - 1)
        dx = torch.empty_like(x) if need_x else None
        dv = torch.zeros_like(values) if need_v else None
        step = samples_per_chunk(n, (g * k + g * r) * oh * ow * x.element_size())
        for s in range(0, n, step):
            dyg = dy[s : s + step].transpose(0, 1).index_select(0, real_rows)  # (G*R, n, oh, ow)
            if padding.numel():
                dyg.index_fill_(0, padding, 0)
            dyg = dyg.view(g, r, -1)
            if dv is not None:  # need_v
                xg = x[s : s + step].transpose(0, 1).index_select(0, channels).view(g, k, -1)
                dv.baddbmm_(dyg, xg.transpose(1, 2))
            if dx is not None:  # need_x
                dxg = torch.bmm(values.transpose(1, 2), dyg).view(g * k, -1, oh, ow)
                dxs = dxg.new_zeros(c_in, *dxg.shape[1:]).index_add_(0, channels, dxg)
                dx[s : s + step].copy_(dxs.transpose(0, 1))
        db = dy.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return dx, dv, db, None, None, None, None


def pointwise_conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    channels: torch.Tensor,
    rows: torch.Tensor,
    order: torch.Tensor | None,
    out_channels: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 1x1 RBGP conv (stride 1, no padding) of x (N, C, H, W), see `PointwiseConvFunction`; under
    autocast on the autocast dtype (`autocast_inputs`)."""
    x, values, bias = autocast_inputs(x, values, bias)
    with torch.autocast(x.device.type, enabled=False):
        return PointwiseConvFunction.apply(x.contiguous(), values, bias, channels, rows, order, out_channels)
