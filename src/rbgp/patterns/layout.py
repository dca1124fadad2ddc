"""The grouped layout the compute kernels run on.

Every row of an RBGP mask has the same number of non-zeros, and rows come in equal groups that share
one column set (rows that differ only in the complete factors' coordinates). A group is one dense
sub-GEMM: its values are stored densely as `(groups, rows_per_group, cols_per_group)`.

When the output width is not a multiple of the group size, the groups are completed with padding
rows (ids `out_features ..`): computed like the others and dropped, so every group keeps the same
shape (a short last group, in effect) for at most a few percent more work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupedLayout:
    """Row and column index lists of the dense sub-blocks of a grouped-sparse (out, in) matrix.

    `row_index[g]` are the output rows of group g and `col_index[g]` the input columns they all read;
    values live as `(G, R, K)` with `values[g, r, k]` the weight at `(row_index[g, r], col_index[g, k])`.
    Row ids from `out_features` up to G * R - 1 are padding rows (computed, never output).
    """

    out_features: int
    in_features: int
    row_index: np.ndarray  # (G, R) int64, a permutation of range(out_features) when flattened
    col_index: np.ndarray  # (G, K) int64, sorted within each group

    def __post_init__(self) -> None:
        rows = np.sort(self.row_index.ravel())
        if not np.array_equal(rows, np.arange(rows.size)) or rows.size < self.out_features:
            raise ValueError(
                f"row_index must list every output row 0..{self.out_features - 1} exactly once (then any padding rows)"
            )
        if self.col_index.ndim != 2 or self.col_index.shape[0] != self.row_index.shape[0]:
            raise ValueError(f"col_index shape {self.col_index.shape} does not match {self.row_index.shape[0]} groups")
        if self.col_index.size and (self.col_index.min() < 0 or self.col_index.max() >= self.in_features):
            raise ValueError(f"col_index out of range for in_features={self.in_features}")
        if self.col_index.shape[1] > 1 and not (np.diff(self.col_index, axis=1) > 0).all():
            g = int(np.nonzero((np.diff(self.col_index, axis=1) <= 0).any(axis=1))[0][0])
            raise ValueError(
                f"col_index must list each group's columns in increasing order without repeats; "
                f"group {g} reads {self.col_index[g].tolist()[:16]}..."
            )

    @property
    def groups(self) -> int:
        return self.row_index.shape[0]

    @property
    def rows_per_group(self) -> int:
        return self.row_index.shape[1]

    @property
    def cols_per_group(self) -> int:
        return self.col_index.shape[1]

    @property
    def padded_rows(self) -> int:
        """Rows computed only to complete the groups (their outputs are dropped)."""
        return self.row_index.size - self.out_features

    @property
    def nnz(self) -> int:
        """Non-zeros of the real (not padding) rows."""
        return self.out_features * self.cols_per_group

    @property
    def values_shape(self) -> tuple[int, int, int]:
        return (self.groups, self.rows_per_group, self.cols_per_group)

    @classmethod
    def from_neighbors(
        cls,
        in_features: int,
        neighbors: np.ndarray,
        group_ids: np.ndarray | None = None,
        out_features: int | None = None,
    ) -> GroupedLayout:
        """Group the rows of a left-regular mask given as `(rows, nnz_per_row)` column lists.

        `group_ids` (one per row) says which rows form a group (they must have equal column sets);
        by default rows with identical column sets are grouped. Rows from `out_features` on (default:
        none) are padding rows. Raises ValueError when the groups are not all the same size.
        """
        neighbors = np.sort(np.asarray(neighbors, dtype=np.int64), axis=1)
        if group_ids is None:
            _, inverse = np.unique(neighbors, axis=0, return_inverse=True)
        else:
            _, inverse = np.unique(np.asarray(group_ids), return_inverse=True)
        inverse = inverse.ravel()
        sizes = np.bincount(inverse)
        if not np.all(sizes == sizes[0]):
            raise ValueError(f"rows do not form equal groups (group sizes {sorted(set(sizes.tolist()))})")
        row_index = np.argsort(inverse, kind="stable").reshape(sizes.size, sizes[0])
        col_index = neighbors[row_index[:, 0]]
        if not np.array_equal(neighbors[row_index], np.broadcast_to(col_index[:, None], neighbors[row_index].shape)):
            raise ValueError("rows grouped together must read the same columns")
        out = neighbors.shape[0] if out_features is None else out_features
        return cls(out, in_features, row_index, col_index)

    def mask(self) -> np.ndarray:
        """The boolean (out, in) mask this layout covers (padding rows left out)."""
        mask = np.zeros((self.row_index.size, self.in_features), dtype=bool)
        mask[self.row_index[:, :, None], self.col_index[:, None, :]] = True
        return mask[: self.out_features]
