"""Dispatch of RBGP convolutions: which path a conv runs is decided once, from its shape and layout.

A conv's path is a static fact of the layer (its kernel, stride, padding, row groups and density),
so it is planned once (`plan_conv`) and kept in its `ConvArgs`; `rbgp_conv2d` only follows it, plus
the device (on CUDA, "auto" keeps 1x1 convs on im2col and the Triton kernels). The paths: a
gathered-channel grouped convolution (`rbgp.ops.channel_conv`) when every row group reads whole input
channels, small groups merged or, when merging costs too much, the dense conv of the masked weight
(without gradient on the CPU, where the output rows are wide enough, the native kernel's implicit GEMM
on the padded input instead: `native.grouped_conv`, `NATIVE_MIN_WIDTH`);
unpadded stride-1 1x1 convs on the CPU as chunked grouped matmuls on the NCHW input
(`rbgp.ops.pointwise_conv`); everything else on im2col and the grouped matmul (`rbgp_linear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from rbgp.ops import native
from rbgp.ops.autocast import autocast_inputs
from rbgp.ops.channel_conv import channel_grouped_conv2d
from rbgp.ops.dispatch import rbgp_linear
from rbgp.ops.finite import nonfinite_rows, surely_finite
from rbgp.ops.im2col import im2col_feature_major
from rbgp.ops.layout import LayoutTensors
from rbgp.ops.pointwise_conv import pointwise_conv2d
from rbgp.ops.weight import SparseWeight

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
MERGE_ROWS = 8
MAX_MERGED_DENSITY = 0.3
"""How channel-layout convs with small row groups run (a static rule of the layer's shape, so the
numbers never depend on a timing). Grouped convs of 2-4-row groups run slower than dense on oneDNN,
so groups of fewer than MERGE_ROWS rows are merged, a few consecutive ones at a time, into groups of
at least MERGE_ROWS rows with block-diagonal weights (`channel_grouped_conv2d(merge=...)`); when the
merged work would exceed MAX_MERGED_DENSITY of the dense conv's, the dense conv of the masked weight
runs instead (each option measured in `benchmarks/conv_merge.md`)."""


def im2col_runs_dense(rows: int, density: float) -> bool:
    """Whether an im2col-path conv (conv_block="block", or a strided or padded 1x1) runs as the dense conv of its
    masked weight: when its row groups are under MERGE_ROWS rows (its GEMMs are then too thin to
    beat the dense one, and this path has no merging), or its density is above MAX_MERGED_DENSITY
    (the grouped GEMM copies each input row once per group that reads it, which then costs more than
    the dense conv saves; `benchmarks/models-cpu.md`, per-layer timings)."""
    return rows < MERGE_ROWS or density > MAX_MERGED_DENSITY


POINTWISE_MIN_ROWS = 4
POINTWISE_MAX_DENSITY = 0.2


def pointwise_runs_dense(rows: int, density: float) -> bool:
    """Whether an unpadded stride-1 1x1 conv runs as the dense conv of its masked weight rather than on the
    pointwise path (`rbgp.ops.pointwise_conv`): row groups under POINTWISE_MIN_ROWS rows, or a density
    above POINTWISE_MAX_DENSITY, where the gathered channels cost more than the skipped multiply-adds
    save (`benchmarks/pointwise_conv.md`, the dispatch table)."""
    return rows < POINTWISE_MIN_ROWS or density > POINTWISE_MAX_DENSITY


def conv_merge(groups: int, rows: int, density: float) -> int | None:
    """How many consecutive row groups a channel-layout conv runs as one (1: none), or None for the
    dense conv of the masked weight (see MERGE_ROWS); `density`: the work of the grouped conv relative
    to the dense one (channel padding included)."""
    merge = next((m for m in range(1, groups + 1) if groups % m == 0 and m * rows >= MERGE_ROWS), groups)
    return merge if merge == 1 or merge * density <= MAX_MERGED_DENSITY else None


@dataclass(frozen=True)
class ConvArgs:
    """A conv's arguments as nn.Conv2d takes them (padding made explicit: (left, right, top, bottom))
    and the dispatch decided from them once (see `plan_conv`)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int, int, int]
    dilation: tuple[int, int]
    padding_mode: str
    out_channels: int
    merge: int | None = 1  # channel path: consecutive groups run as one; None: the masked dense conv
    pointwise_dense: bool = False  # a 1x1 on the pointwise path runs as the masked dense conv
    im2col_dense: bool = False  # the im2col path runs as the masked dense conv ("auto")
    rows_in_order: bool = True  # group-major outputs are channel order already


def plan_conv(
    layout: LayoutTensors,
    channels: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
    padding_mode: str,
    density: float,
) -> ConvArgs:
    """The ConvArgs of a conv whose (out, C*kh*kw) weight has `layout` (and channel table `channels`,
    see `SparseWeight`) with these arguments."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    g, r, k = layout.values_shape
    merge: int | None = 1
    if channels is not None:
        merge = conv_merge(g, r, density * channels.numel() / (g * k) * math.prod(kernel_size))
    in_order = bool(torch.equal(layout.row_order.cpu(), torch.arange(layout.row_order.numel())))
    return ConvArgs(
        cast(tuple[int, int], tuple(kernel_size)),
        cast(tuple[int, int], tuple(stride)),
        cast(tuple[int, int, int, int], tuple(pad)),
        cast(tuple[int, int], tuple(dilation)),
        padding_mode,
        layout.out_features,
        merge,
        pointwise_runs_dense(r, density),
        im2col_runs_dense(r, density),
        in_order,
    )


def masked_dense_conv2d(
    x: torch.Tensor, weight: SparseWeight, conv: ConvArgs, padding: tuple[int, int], bias: torch.Tensor | None
) -> torch.Tensor:
    """The dense conv of the masked weight (the path for layers too small or too dense to gain)."""
    x, values, bias = autocast_inputs(x, weight.values, bias)
    kh, kw = conv.kernel_size
    dense = SparseWeight(values, weight.layout).dense()
    w = dense.reshape(conv.out_channels, weight.layout.in_features // (kh * kw), kh, kw)
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x, w, bias, conv.stride, padding, conv.dilation)


def rbgp_conv2d(
    x: torch.Tensor, weight: SparseWeight, conv: ConvArgs, bias: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """The RBGP conv of x (N, C, H, W) on the path `conv` planned (see the module docstring); backends
    "triton" and "reference" always take im2col. The output is what nn.Conv2d gives: contiguous in the
    input's memory format, and NaN at every output position whose window holds an inf or NaN input
    (the densified weight's zeros times inf or NaN)."""
    left, right, top, bottom = conv.pad
    if conv.padding_mode == "zeros" and left == right and top == bottom:
        padding = (top, left)  # the conv (or im2col) pads with zeros itself
    else:
        x = F.pad(x, conv.pad, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
        padding = (0, 0)
    y = _conv_on_path(x, weight, conv, padding, bias, backend)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if surely_finite(x):
        return y
    flags = _nonfinite_windows(x, conv, padding).to(y.dtype)
    return y + flags if y.requires_grad else y.add_(flags)


def _nonfinite_windows(x: torch.Tensor, conv: ConvArgs, padding: tuple[int, int]) -> torch.Tensor:
    """(N, 1, OH, OW): 0, or NaN where the conv window reads an inf or NaN input."""
    flags = nonfinite_rows(x, 1)  # 0, or NaN at a position with an inf or NaN channel
    if conv.kernel_size == (1, 1) and padding == (0, 0):
        return flags[:, :, :: conv.stride[0], :: conv.stride[1]]
    ones = flags.new_ones(1, 1, *conv.kernel_size)
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(flags, ones, None, conv.stride, padding, conv.dilation)


NATIVE_MIN_WIDTH = 8
"""Channel-path convs whose output rows have at least this many pixels run on the native kernel
(`native.grouped_conv`, CPU, no gradient): it takes a row's pixels 8 at a time, so narrower rows would
leave most of each vector idle (`benchmarks/native_conv.md`)."""


def _native_takes(x: torch.Tensor, weight: SparseWeight, conv: ConvArgs, padding: tuple[int, int]) -> bool:
    kw, sw, dw = conv.kernel_size[1], conv.stride[1], conv.dilation[1]
    width = (x.shape[3] + 2 * padding[1] - dw * (kw - 1) - 1) // sw + 1  # of an output row
    return width >= NATIVE_MIN_WIDTH and kw <= native.CONV_MAX_KW and native.conv_applies(x, weight.values)


def _native_conv(
    x: torch.Tensor, weight: SparseWeight, conv: ConvArgs, padding: tuple[int, int], bias: torch.Tensor | None
) -> torch.Tensor:
    """The channel-path conv on the native kernel, its tables kept in the layout's workspace."""
    layout, channels = weight.layout, cast(torch.Tensor, weight.channels)
    taps = conv.kernel_size[0] * conv.kernel_size[1]

    def tables() -> tuple[torch.Tensor, torch.Tensor]:
        used = -(-layout.values_shape[2] // taps)  # the padded channel table's channels the values reach
        return channels[:, :used].to(torch.int64).contiguous(), layout.row_index.to(torch.int64).contiguous()

    blocks, rows = tables() if layout.workspace is None else layout.workspace.get("native conv", (), tables)
    values = weight.values
    if values.shape[2] < blocks.shape[1] * taps:
        values = F.pad(values, (0, blocks.shape[1] * taps - values.shape[2]))
    return native.grouped_conv(
        x,
        values,
        blocks,
        rows,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        padding,
        conv.dilation,
        bias,
        layout.workspace,
    )


def _conv_on_path(
    x: torch.Tensor,
    weight: SparseWeight,
    conv: ConvArgs,
    padding: tuple[int, int],
    bias: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    layout = weight.layout
    if weight.channels is not None and backend in ("auto", "grouped"):
        if conv.merge is None:  # tiny groups: the masked dense conv is faster
            return masked_dense_conv2d(x, weight, conv, padding, bias)
        if backend == "auto" and _native_takes(x, weight, conv, padding):
            return _native_conv(x, weight, conv, padding, bias)
        order = None if conv.rows_in_order else layout.row_order
        return channel_grouped_conv2d(
            x,
            weight.values,
            weight.channels,
            order,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            padding,
            conv.dilation,
            bias,
            conv.merge,
            layout.workspace,
        )
    pointwise = backend == "grouped" or (backend == "auto" and x.device.type == "cpu")
    if pointwise and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and padding == (0, 0):
        if backend == "auto" and conv.pointwise_dense:
            return masked_dense_conv2d(x, weight, conv, padding, bias)
        ordered = conv.rows_in_order and layout.row_order.numel() == conv.out_channels
        return pointwise_conv2d(
            x,
            weight.values,
            layout.col_index.reshape(-1),
            layout.row_index.reshape(-1),
            None if ordered else layout.row_order[: conv.out_channels],
            conv.out_channels,
            bias,
        )
    if backend == "auto" and conv.im2col_dense:
        return masked_dense_conv2d(x, weight, conv, padding, bias)
    cols, oh, ow = im2col_feature_major(x, conv.kernel_size, conv.stride, padding, conv.dilation)
    # the feature-major matrix goes in as its transposed (N*L, C*kh*kw) view: the gather reads rows
    y = rbgp_linear(cols.t(), weight, bias, backend, im2col=True)  # (N*L, out), maybe a transposed view
    # (N, out, OH, OW); rbgp_conv2d makes it contiguous in the input's memory format
    return y.view(x.shape[0], oh, ow, conv.out_channels).permute(0, 3, 1, 2)
