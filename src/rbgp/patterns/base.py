"""The Pattern interface and the concrete mask it builds.

A `Pattern` is a recipe (kind and granularity); `Pattern.build(shape, sparsity, seed)` turns it into a
`SparseMask`: the 0/1 mask of one weight, its density, its load balance and what its structure costs
to store, compared with CSR and BSR indices for the very same mask.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np

from rbgp.graphs.bipartite import require_int
from rbgp.patterns import resources
from rbgp.patterns.layout import GroupedLayout
from rbgp.patterns.resources import Cost

INDEX_BYTES = 4  # int32 indices, as torch/cuSPARSE store CSR/BSR on the GPU


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= minimum, or a ValueError naming it."""
    return require_int(value, name, minimum)


def check_sparsity(sparsity: Any) -> float:
    """`sparsity` as a float strictly inside (0, 1), or a ValueError naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 < cast(float, sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in (0, 1) (fraction of zero weights), got {sparsity!r}")
    return float(sparsity)


def matrix_shape(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """The (out, in) matrix a weight is sparsified as: conv (c_out, c_in, kh, kw) -> (c_out, c_in*kh*kw)."""
    shape = tuple(weight_shape)
    if len(shape) < 2:
        raise ValueError(f"weight shape must have at least 2 dims (out, in, ...), got {shape!r}")
    for i, s in enumerate(shape):
        check_int(f"weight shape[{i}]", s)
    return shape[0], math.prod(shape[1:])


def csr_bytes(mask: np.ndarray) -> int:
    """Index bytes of the mask in CSR: row pointers plus one column index per non-zero."""
    return (mask.shape[0] + 1) * INDEX_BYTES + int(mask.sum()) * INDEX_BYTES


def bsr_bytes(mask: np.ndarray, block: tuple[int, int]) -> int:
    """Index bytes of the mask in BSR with `block`: block-row pointers plus one index per non-zero block."""
    bh, bw = block
    m, n = mask.shape
    if m % bh or n % bw:
        raise ValueError(f"block {block} does not tile the mask shape {mask.shape}")
    blocks = mask.reshape(m // bh, bh, n // bw, bw).any(axis=(1, 3))
    return (m // bh + 1) * INDEX_BYTES + int(blocks.sum()) * INDEX_BYTES


@dataclass(frozen=True)
class SparseMask:
    """A concrete sparsity structure for one weight.

    `array` is the (out, in) boolean mask of the matrix view; `layout` is set when every row has the
    same number of non-zeros and rows fall into equal groups that share a column set (the RBGP fast
    path); `graph` is the product graph for RBGP masks; `bsr_block` is the natural block size for the
    BSR comparison; `info` carries pattern-specific facts for reports.

    A mask with a layout keeps no dense array (`dense=None`): `array` is computed from the layout on
    each access (out x in bytes, so a layer holding the mask stays as small as its index lists), and
    the counts come from the layout without it.
    """

    kind: str
    weight_shape: tuple[int, ...]
    dense: np.ndarray | None
    structure_bytes: int
    bsr_block: tuple[int, int] = (1, 1)
    layout: GroupedLayout | None = None
    graph: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dense is None and self.layout is None:
            raise ValueError("a SparseMask needs its dense array or a grouped layout")

    @property
    def array(self) -> np.ndarray:
        """The (out, in) boolean mask (built from the layout on each access when none is stored)."""
        if self.dense is not None:
            return self.dense
        assert self.layout is not None  # __post_init__: a dense array or a layout
        return self.layout.mask()

    @property
    def shape(self) -> tuple[int, int]:
        return matrix_shape(self.weight_shape)

    @property
    def nnz(self) -> int:
        if self.dense is None:
            assert self.layout is not None  # __post_init__: a dense array or a layout
            return self.layout.nnz
        return int(self.dense.sum())

    @property
    def density(self) -> float:
        m, n = self.shape
        return self.nnz / (m * n)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def nnz_per_row(self) -> int | None:
        """Non-zeros in every row when all rows have the same count (perfect load balance), else None."""
        if self.dense is None:
            assert self.layout is not None  # __post_init__: a dense array or a layout
            return self.layout.cols_per_group
        counts = self.dense.sum(axis=1)
        return int(counts[0]) if np.all(counts == counts[0]) else None

    def csr_bytes(self) -> int:
        if self.dense is None:
            return (self.shape[0] + 1 + self.nnz) * INDEX_BYTES
        return csr_bytes(self.dense)

    def bsr_bytes(self) -> int:
        return bsr_bytes(self.array, self.bsr_block)

    def weight_mask(self) -> np.ndarray:
        """The mask in the weight's own shape (4-D for conv weights)."""
        return self.array.reshape(self.weight_shape)

    def summary(self) -> dict[str, Any]:
        """Plain-data facts about this mask for reports and `--json`."""
        return {
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "matrix_shape": list(self.shape),
            "density": self.density,
            "sparsity": self.sparsity,
            "nnz": self.nnz,
            "nnz_per_row": self.nnz_per_row,
            "structure_bytes": self.structure_bytes,
            "csr_bytes": self.csr_bytes(),
            "bsr_bytes": self.bsr_bytes(),
            "bsr_block": list(self.bsr_block),
            **self.info,
        }


def describe_request(kind: str, weight_shape: tuple[int, ...], sparsity: float | None) -> str:
    """'a 1000000000 x 64 rbgp4 mask at sparsity 0.5' (with the weight shape of a conv), for messages."""
    m, n = matrix_shape(weight_shape)
    conv = f" (weight {'x'.join(map(str, weight_shape))})" if len(tuple(weight_shape)) > 2 else ""
    at = f" at sparsity {sparsity:g}" if sparsity is not None else ""
    return f"a {m} x {n}{conv} {kind} mask{at}"


class Pattern(ABC):
    """A sparsity recipe: `build(weight_shape, sparsity, seed)` gives a `SparseMask`.

    Every `build` checks its arguments, then `estimate`s the memory and time it needs and refuses
    (`check_resources`: a `resources.ResourceError`, a ValueError) what would not fit in the memory
    limit, before allocating anything large; see `rbgp.patterns.resources`.
    """

    kind: ClassVar[str]

    @abstractmethod
    def build(self, weight_shape: tuple[int, ...], sparsity: float, seed: int = 0) -> SparseMask:
        """The mask for `weight_shape` at `sparsity`; a pure function of the arguments (different
        seeds give different masks wherever the pattern has more than one)."""

    def estimate(self, weight_shape: tuple[int, ...], sparsity: float) -> Cost:
        """Rough peak memory (bytes) and time (s) `build(weight_shape, sparsity)` needs, from closed
        forms: nothing large is allocated. Default: a builder working on the dense mask."""
        m, n = matrix_shape(weight_shape)
        check_sparsity(sparsity)
        return resources.dense_mask_cost(m, n, 9, 1e-7)

    def check_resources(
        self,
        weight_shape: tuple[int, ...],
        sparsity: float,
        estimate: Cost | None = None,
        extra: Cost | None = None,
        action: str = "to build",
    ) -> Cost:
        """`estimate` (default: `self.estimate(...)`) plus `extra`, or a ResourceError (a ValueError) naming
        the shape, the estimate and the limit when it needs more memory than the limit."""
        total = self.estimate(weight_shape, sparsity) if estimate is None else estimate
        if extra is not None:
            total = total + extra
        return resources.check(describe_request(self.kind, tuple(weight_shape), sparsity), total, action)

    def fit(self, weight: np.ndarray, weight_shape: tuple[int, ...], sparsity: float, seed: int = 0) -> SparseMask:
        """The mask of this pattern that keeps the most |weight| mass (`weight` as the (out, in) matrix),
        for converting trained weights (sparsify's init="magnitude")."""
        raise ValueError(
            f"init='magnitude' is not available for pattern {self.kind!r}; "
            f"it is for 'rbgp4', 'unstructured', 'block' and 'nm'"
        )

    def nearest_sparsity(self, weight_shape: tuple[int, ...], sparsity: float) -> float | None:
        """The feasible sparsity nearest to `sparsity` for this shape (itself when it is feasible), or
        None when the pattern cannot make this shape sparse at all."""
        try:
            self.build(tuple(weight_shape), sparsity, 0)
        except resources.ResourceError:
            raise  # too big to build is not "cannot be made sparse"
        except ValueError:
            return None
        return sparsity

    def achieved_sparsity(self, weight_shape: tuple[int, ...], sparsity: float) -> float | None:
        """The sparsity the structure built for the nearest feasible sparsity really has (planners round),
        or None when the pattern cannot make this shape sparse at all."""
        nearest = self.nearest_sparsity(weight_shape, sparsity)
        return None if nearest is None else float(self.build(tuple(weight_shape), nearest, 0).sparsity)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"
