"""Channel-granular RBGP convolutions: a gathered-channel grouped convolution, no im2col.

When every row group of a conv's layout reads whole input channels (each with all its kh x kw taps,
RBGP4's default micro-block for convs), the sparse conv is G small dense convs: group g's R output
channels see only its input channels. So the input channels of all groups are gathered once
(`index_select` on the channel dim), one `F.conv2d(..., groups=G)` computes every group, and the
group-major outputs are put back in channel order. Nothing is 9x-expanded as in im2col, the dense
convs run on the conv library's kernels (oneDNN on CPU), and the backward is the library's grouped
conv backward plus an `index_add` over channel planes (whole contiguous H x W planes, not im2col
rows). Measured against dense and the im2col path in `benchmarks/cpu.md` (`rbgp bench`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def channel_grouped_conv2d(x: torch.Tensor, values: torch.Tensor, channels: torch.Tensor, row_order: torch.Tensor,
                           out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                           padding: tuple[int, int], dilation: tuple[int, int],
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The RBGP conv of x (N, C, H, W) with (G, R, K) `values` whose group g reads input `channels[g]`;
    `row_order` puts the G*R group-major outputs in channel order (padding rows last, dropped)."""
    if x.dtype != values.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"input dtype {x.dtype} differs from the weight dtype {values.dtype}; cast one or use autocast")
    g, r, k = values.shape
    kh, kw = kernel_size
    weight = values.reshape(g * r, k // (kh * kw), kh, kw)
    y = F.conv2d(x.index_select(1, channels.reshape(-1)), weight, None, stride, padding, dilation, g)
    y = y.index_select(1, row_order[:out_channels])
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)
