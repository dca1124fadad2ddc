"""The grouped layout as torch tensors, ready for the compute paths."""

from __future__ import annotations

from typing import NamedTuple

import torch

from rbgp.patterns import GroupedLayout


class LayoutTensors(NamedTuple):
    """`row_index` (G, R), `col_index` (G, K) and `row_order` (out,) int64 tensors of one layout.

    `row_order` puts the group-major outputs back in feature order: `y = y_grouped[..., row_order]`.
    """

    row_index: torch.Tensor
    col_index: torch.Tensor
    row_order: torch.Tensor
    in_features: int

    @classmethod
    def from_layout(cls, layout: GroupedLayout, device: torch.device | str | None = None) -> LayoutTensors:
        rows = torch.as_tensor(layout.row_index, dtype=torch.int64, device=device)
        cols = torch.as_tensor(layout.col_index, dtype=torch.int64, device=device)
        order = torch.argsort(rows.reshape(-1))
        return cls(rows, cols, order, layout.in_features)

    @property
    def out_features(self) -> int:
        return self.row_order.numel()

    @property
    def values_shape(self) -> tuple[int, int, int]:
        return (self.row_index.shape[0], self.row_index.shape[1], self.col_index.shape[1])

    def to(self, device: torch.device | str) -> LayoutTensors:
        return LayoutTensors(self.row_index.to(device), self.col_index.to(device), self.row_order.to(device),
                             self.in_features)
