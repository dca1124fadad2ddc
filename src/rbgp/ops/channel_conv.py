"""Channel-granular RBGP convolutions: a gathered-channel grouped convolution, no im2col.

When every row group of a conv's layout reads whole input channels (each with all its kh x kw taps,
RBGP4's default micro-block for convs), the sparse conv is G small dense convs: group g's R output
channels see only its input channels. So the input channels of all groups are gathered once
(`index_select` on the channel dim), one `F.conv2d(..., groups=G)` computes every group, and the
group-major outputs are put back in channel order (nothing to do for RBGP4, which labels a conv's
rows group by group). Nothing is 9x-expanded as in im2col, the dense convs run on the conv library's
kernels (oneDNN on CPU), and the backward is the library's grouped conv backward plus an `index_add`
over channel planes (whole contiguous H x W planes, not im2col rows; 2-4% of a layer's
forward+backward in a profile of 128-512-channel layers at 90%). Two
adjustments keep oneDNN on its fast kernels: channel lists padded to a multiple of CHANNEL_ALIGN
(`padded_channels`), and small row groups merged into taller ones (`merge`, block-diagonal weights).
Measured against dense and the other paths in `benchmarks/cpu.md` and `benchmarks/conv_merge.md`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rbgp.ops.workspace import Workspace


def channel_table(col_index: torch.Tensor, taps: int) -> torch.Tensor | None:
    """(G, K // taps) int64 input channels of every group when each group's columns are whole channels
    (aligned runs of `taps` columns of the (C*kh*kw) im2col order), else None."""
    g, k = col_index.shape
    if taps <= 1 or k % taps:
        return None
    runs = col_index.reshape(g, k // taps, taps)
    first = runs[:, :, :1]
    if bool((first % taps == 0).all()) and torch.equal(runs, first + torch.arange(taps, device=col_index.device)):
        return (first[..., 0] // taps).contiguous()
    return None


CHANNEL_ALIGN = 8
"""Channels per group are padded to a multiple of this: oneDNN's grouped conv runs several times
slower when they are not (`benchmarks/conv_merge.md`). The padding channels repeat a channel of the
group and get zero weights, so they add work but change no result."""


def padded_channels(channels: torch.Tensor, align: int = CHANNEL_ALIGN) -> torch.Tensor:
    """(G, C') channel table with C' the next multiple of `align`: each group's list continued with
    copies of its first channel (read with zero weights)."""
    pad = -channels.shape[1] % align
    return torch.cat([channels, channels[:, :1].expand(-1, pad)], 1).contiguous() if pad else channels


def merged_weight(values: torch.Tensor, merge: int) -> torch.Tensor:
    """(G // merge, merge * R, merge * K) block-diagonal weights: `merge` consecutive groups as one,
    each row reading its own group's columns (zeros for the others'). Differentiable in `values`."""
    g, r, k = values.shape
    eye = torch.eye(merge, dtype=values.dtype, device=values.device).view(1, merge, 1, merge, 1)
    return (values.view(g // merge, merge, r, 1, k) * eye).reshape(g // merge, merge * r, merge * k)


KEPT_GATHER_BYTES = 16 << 20
"""Gathered inputs of at least this many bytes go into a buffer the layer keeps (calls without gradient):
glibc maps blocks that large afresh and faults them in on every call, which costs as much as the conv
(`benchmarks/kept_gather.md`). Smaller ones come from the allocator's free lists, still in cache, where
a kept buffer that has left the cache was measured slower."""


def channel_grouped_conv2d(
    x: torch.Tensor,
    values: torch.Tensor,
    channels: torch.Tensor,
    row_order: torch.Tensor | None,
    out_channels: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    bias: torch.Tensor | None = None,
    merge: int = 1,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """The RBGP conv of x (N, C, H, W) with (G, R, K) `values` whose group g reads input `channels[g]`;
    `row_order` puts the G*R group-major outputs in channel order (padding rows last, dropped); None
    when they are in channel order already (RBGP4's conv labelling), which saves a copy of the output.
    `channels` may be longer than K / (kh * kw) (`padded_channels`): the extra ones get zero weights.

    merge: run every `merge` consecutive groups as one group of the grouped conv, with a block-diagonal
    weight (`merged_weight`): `merge` times the multiply-adds, but GEMMs `merge` times taller, which the
    conv library runs far better than 2-4-row ones. The gathered input is the same either way.

    workspace: where a call without gradient on the CPU gathers its input channels into a kept buffer
    (`Workspace.buffer`) instead of a fresh tensor, when they take KEPT_GATHER_BYTES or more."""
    if x.dtype != values.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"input dtype {x.dtype} differs from the weight dtype {values.dtype}; cast one or use autocast"
        )
    g, r, k = values.shape
    kh, kw = kernel_size
    if g % merge:
        raise ValueError(f"merge={merge} must divide the {g} groups")
    pad = channels.shape[1] * kh * kw - k
    if pad:
        values = F.pad(values, (0, pad))
    weight = (merged_weight(values, merge) if merge > 1 else values).reshape(
        g * r, merge * (k + pad) // (kh * kw), kh, kw
    )
    index, groups = channels.reshape(-1), g // merge
    shape = (x.shape[0], index.numel(), *x.shape[2:])
    if (
        workspace is not None
        and math.prod(shape) * x.element_size() >= KEPT_GATHER_BYTES
        and _reuses_buffers(x, values)
        and workspace.lock.acquire(blocking=False)
    ):
        try:  # another thread on the same layer meanwhile gathers into a fresh tensor (below)
            gathered = torch.index_select(x, 1, index, out=workspace.buffer("gathered", shape, x))
            y = F.conv2d(gathered, weight, None, stride, padding, dilation, groups)
        finally:
            workspace.lock.release()
    else:
        y = F.conv2d(x.index_select(1, index), weight, None, stride, padding, dilation, groups)
    if row_order is not None:
        y = y.index_select(1, row_order[:out_channels])
    elif y.shape[1] > out_channels:
        y = y[:, :out_channels].contiguous()
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


def _reuses_buffers(x: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether a call may gather into a kept buffer: eager, on the CPU, and nothing keeps its inputs
    for a backward."""
    return (
        x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or values.requires_grad))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )
