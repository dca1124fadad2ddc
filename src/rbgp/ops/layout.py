"""The grouped layout as torch tensors: one object per layer, built once, everything the compute reads.

Besides the group index lists it holds the small tables of the Triton kernels, derived once here (not
per call): BW is the widest width (<= 128) for which every group's columns are whole aligned runs of
BW (RBGP4 micro-blocks, a conv's kh*kw taps; 1 when there are none), `col_blocks` (G, K // BW) gives each group's
column blocks and `col_entries` (ceil(in / BW), D) lists, for every input block, the (group, block
slot) pairs that read it (`g * (K // BW) + slot`, padded with -1), the transposed pattern.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from rbgp.ops.workspace import Workspace
from rbgp.patterns import GroupedLayout

MAX_BLOCK_WIDTH = 128


def detect_block_width(col_index: torch.Tensor, max_width: int = MAX_BLOCK_WIDTH) -> int:
    """The widest BW <= max_width dividing K such that every group's columns are aligned runs
    [j * BW, j * BW + BW) (in any block order); 1 when there is none. BW need not be a power of two:
    a conv's channel micro-block is its kh*kw taps (9 for 3x3)."""
    g, k = col_index.shape
    for bw in range(min(k, max_width), 1, -1):
        if k % bw:
            continue
        runs = col_index.reshape(g, k // bw, bw)
        first = runs[:, :, :1]
        if bool(((first % bw) == 0).all()) and torch.equal(runs, first + torch.arange(bw, device=col_index.device)):
            return bw
    return 1


def block_tables(col_index: torch.Tensor, in_features: int, block_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(col_blocks (G, K // BW), col_entries (ceil(in / BW), D)) as int32, for aligned runs of `block_width`."""
    g, k = col_index.shape
    if k % block_width or (block_width > 1 and detect_block_width(col_index, block_width) != block_width):
        raise ValueError(f"col_index is not made of aligned runs of block_width={block_width}")
    col_blocks = col_index[:, ::block_width] // block_width if block_width > 1 else col_index
    n_blocks = -(-in_features // block_width)
    flat = col_blocks.reshape(-1)
    counts = torch.bincount(flat, minlength=n_blocks)
    depth = int(counts.max()) if flat.numel() else 0
    order = torch.argsort(flat, stable=True)  # entry e = g * kb + slot, ordered by block then e
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    entries = torch.full((n_blocks, max(depth, 1)), -1, dtype=torch.int64, device=flat.device)
    entries[flat[order], slot] = order
    return col_blocks.to(torch.int32).contiguous(), entries[:, :depth].to(torch.int32).contiguous()


def detect_row_strides(row_index: torch.Tensor) -> tuple[int, int] | None:
    """(group stride, row stride) when group g's row r is row g * sg + r * sr with the rows in order
    ((R, 1): convs label rows group by group) or interleaved ((1, G): every RBGP4 linear plan), so that
    group-major outputs are a strided view of row order; None for any other order."""
    g, r = row_index.shape
    ar = torch.arange(g * r, device=row_index.device)
    for sg, sr in ((r, 1), (1, g)):
        if torch.equal(row_index, ar[:g, None] * sg + ar[None, :r] * sr):
            return sg, sr
    return None


class LayoutTensors(NamedTuple):
    """One layer's layout: `row_index` (G, R), `col_index` (G, K), `row_order` (G*R,) int64, and the
    kernels' `col_blocks` / `col_entries` int32 tables for micro-blocks of `block_width` columns.
    Static facts derived once: `row_strides` (see `detect_row_strides`); `workspace` keeps the tables the
    torch path reuses from call to call (owned by this layout, see `rbgp.ops.workspace`).

    `row_order` puts the group-major outputs back in row order: `y = y_grouped[..., row_order]`. The
    kernels compute all G*R rows; rows from `out_features` on are padding rows that complete the last
    groups, and `rbgp_linear` drops them.
    """

    row_index: torch.Tensor
    col_index: torch.Tensor
    row_order: torch.Tensor
    in_features: int
    block_width: int
    col_blocks: torch.Tensor
    col_entries: torch.Tensor
    out_features: int
    row_strides: tuple[int, int] | None = None
    workspace: Workspace | None = None

    @classmethod
    def from_layout(cls, layout: GroupedLayout, device: torch.device | str | None = None) -> LayoutTensors:
        return cls.from_indices(
            torch.tensor(layout.row_index, dtype=torch.int64),  # copies: own storage
            torch.tensor(layout.col_index, dtype=torch.int64),
            layout.in_features,
            device,
            out_features=layout.out_features,
        )

    @classmethod
    def from_indices(
        cls,
        row_index: torch.Tensor,
        col_index: torch.Tensor,
        in_features: int,
        device: torch.device | str | None = None,
        block_width: int | None = None,
        out_features: int | None = None,
    ) -> LayoutTensors:
        """Build every table from (G, R) row and (G, K) column lists; `block_width` is detected when
        not given (and checked when given); `out_features` defaults to G*R (no padding rows)."""
        if row_index.dim() != 2 or col_index.dim() != 2 or row_index.shape[0] != col_index.shape[0]:
            raise ValueError(
                f"row_index {tuple(row_index.shape)} and col_index {tuple(col_index.shape)} must be "
                f"(G, R) and (G, K) with the same G"
            )
        if col_index.numel() and (int(col_index.min()) < 0 or int(col_index.max()) >= in_features):
            raise ValueError(f"col_index holds columns outside [0, {in_features})")
        rows, cols = row_index.long().cpu(), col_index.long().cpu()
        # checked once here, where the kernels' tables are built: the native kernel writes by these ids
        if not torch.equal(rows.reshape(-1).sort().values, torch.arange(rows.numel())):
            raise ValueError(f"row_index must hold every row id 0..{rows.numel() - 1} exactly once")
        if cols.shape[1] > 1 and not bool((cols.diff(dim=1) > 0).all()):
            raise ValueError("col_index must be strictly increasing within each group (sorted, no column twice)")
        bw = detect_block_width(cols) if block_width is None else block_width
        col_blocks, col_entries = block_tables(cols, in_features, bw)
        order = torch.argsort(rows.reshape(-1))
        out = rows.numel() if out_features is None else out_features
        if not 0 < out <= rows.numel():
            raise ValueError(f"out_features={out} must be in [1, {rows.numel()}] (the rows of the layout)")
        return cls(
            rows, cols, order, in_features, bw, col_blocks, col_entries, out, detect_row_strides(rows), Workspace()
        ).to(device)

    @property
    def padded_rows(self) -> int:
        """Rows the kernels compute beyond `out_features` (dropped)."""
        return self.row_order.numel() - self.out_features

    @property
    def values_shape(self) -> tuple[int, int, int]:
        return (self.row_index.shape[0], self.row_index.shape[1], self.col_index.shape[1])

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The tensors a module registers (as non-persistent buffers, so `.to()` moves them)."""
        return {
            name: getattr(self, name) for name in ("row_index", "col_index", "row_order", "col_blocks", "col_entries")
        }

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    def to(self, device: torch.device | str | None) -> LayoutTensors:
        if device is None:
            return self
        moved: dict[str, Any] = {k: t.to(device) for k, t in self.buffers.items()}
        return self._replace(**moved)
