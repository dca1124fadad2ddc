"""Feature-major im2col for convolutions run as grouped-sparse matmuls.

An RBGP conv's pattern lives on the (c_out, c_in*kh*kw) im2col matrix, where a micro-block spans the
taps of neighbouring channels; per-tap shifted matmuls would split those dense sub-GEMMs, so convs
use im2col. It is built directly as the feature-major (c_in*kh*kw, N*oh*ow) matrix the grouped path
gathers rows from: one strided copy per tap, instead of `F.unfold` followed by a transpose.
"""

from __future__ import annotations

import torch


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col_feature_major(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, int, int]:
    """(N, C, H, W) -> ((C*kh*kw, N*oh*ow) contiguous, oh, ow); rows ordered like a conv weight's
    (c_in, kh, kw) flattening. Differentiable."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh, ow = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kernel} with padding {padding}, dilation {dilation}")
    xc = x.transpose(0, 1)  # (C, N, H, W); the stack below copies it
    if ph or pw:
        xc = torch.nn.functional.pad(xc, (pw, pw, ph, ph))
    taps = [
        xc[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    cols = torch.stack(taps, dim=1)  # (C, kh*kw, N, oh, ow)
    return cols.reshape(c * kh * kw, n * oh * ow), oh, ow
