"""The plain PyTorch reference every fast path is tested against: a dense masked matmul."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rbgp.ops.layout import LayoutTensors


def dense_weight(values: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """The (out, in) weight with the grouped `values` in place and zeros elsewhere (padding rows dropped)."""
    g, r, k = values.shape
    weight = values.new_zeros(g * r, layout.in_features)
    rows = layout.row_index[:, :, None].expand(g, r, k)
    cols = layout.col_index[:, None, :].expand(g, r, k)
    return weight.index_put((rows.reshape(-1), cols.reshape(-1)), values.reshape(-1))[: layout.out_features]


def grouped_values(weight: torch.Tensor, layout: LayoutTensors) -> torch.Tensor:
    """The inverse of `dense_weight`: the (G, R, K) values of a dense weight at the layout's non-zeros
    (zero on padding rows)."""
    if layout.padded_rows:
        weight = F.pad(weight, (0, 0, 0, layout.padded_rows))
    return weight[layout.row_index[:, :, None], layout.col_index[:, None, :]]


def reference_linear(
    x: torch.Tensor, values: torch.Tensor, layout: LayoutTensors, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x W^T + b with W the masked dense weight; autograd gives the reference gradients."""
    return F.linear(x, dense_weight(values, layout), bias)
