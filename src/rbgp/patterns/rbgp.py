"""RBGP patterns: the mask is the bipartite graph product of a list of factor graphs.

`RBGP(factors)` takes any factor list; `RBGP4` (in `rbgp4.py`) plans the paper's four-factor form.
An optional fixed input permutation (`input_shuffle`) relabels the inputs so that consecutive layers
do not line up their Kronecker tiles (DESIGN.md, 'Across layers'); it costs nothing in the gather-based
kernels, which read inputs through the column index lists anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rbgp.graphs import BipartiteGraph, ProductGraph, product
from rbgp.patterns import resources
from rbgp.patterns.base import Pattern, SparseMask, check_int, matrix_shape
from rbgp.patterns.layout import GroupedLayout


def stride_permutation(n: int, stride: int, inner: int = 1) -> np.ndarray:
    """Perfect-shuffle permutation of `n` features in units of `inner` consecutive columns.

    Logical input j reads feature `perm[j]`: unit u = j // inner goes to (u % stride) * (units // stride)
    + u // stride, i.e. the (units/stride, stride) grid is transposed. stride 1 is the identity.
    """
    check_int("stride", stride)
    units, rem = divmod(n, inner)
    if rem or units % stride:
        raise ValueError(f"input_shuffle stride {stride} must divide the {units} input units of {inner} columns")
    u = np.arange(units)
    unit_perm = (u % stride) * (units // stride) + u // stride
    return (unit_perm[:, None] * inner + np.arange(inner)[None, :]).ravel()


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is <= at_most (>= 1), by trial division up to sqrt(n)."""
    if n % at_most == 0 or at_most >= n:
        return min(n, at_most)
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for x in (d, n // d):
                if best < x <= at_most:
                    best = x
    return best


class RBGP(Pattern):
    """A mask equal to the product of `factors` (Kronecker product of their biadjacency matrices).

    input_shuffle: stride of a perfect shuffle of the input micro-blocks; when it does not divide
    their number, the largest divisor below it is used (the mask's info reports the one used).
    The factors are given, so the mask does not depend on the seed.
    """

    kind = "rbgp"

    def __init__(self, factors: Sequence[BipartiteGraph], input_shuffle: int = 1) -> None:
        if not factors or not all(isinstance(f, BipartiteGraph) for f in factors):
            raise ValueError(f"factors must be a non-empty list of BipartiteGraph, got {factors!r}")
        self.factors = tuple(factors)
        self.input_shuffle = check_int("input_shuffle", input_shuffle)

    def estimate(self, weight_shape, sparsity=None) -> resources.Cost:
        """The product's neighbour lists and grouped layout (the factors exist already)."""
        matrix_shape(weight_shape)
        rows = math.prod(f.m for f in self.factors)
        per_row = math.prod(int(f.left_degrees().max(initial=0)) for f in self.factors)
        return resources.product_layout_cost(rows, per_row)

    def build(self, weight_shape, sparsity=None, seed=0) -> SparseMask:
        graph = product(*self.factors)
        self.check_resources(weight_shape, sparsity)
        return product_mask(self.kind, tuple(weight_shape), graph, sparsity, self.input_shuffle)


def product_mask(
    kind: str,
    weight_shape: tuple[int, ...],
    graph: ProductGraph,
    sparsity: float | None = None,
    input_shuffle: int = 1,
    info: dict | None = None,
    padded_rows: int = 0,
) -> SparseMask:
    """The SparseMask (with its grouped layout) of a product graph on a weight of `weight_shape`; the
    graph's last `padded_rows` rows complete the row groups and are not part of the weight."""
    m, n = matrix_shape(weight_shape)
    if (graph.m, graph.n) != (m + padded_rows, n):
        raise ValueError(
            f"factor product is {graph.m}x{graph.n} but the weight matrix is {m}x{n} (out, in*kh*kw)"
            + (f" plus {padded_rows} padding rows" if padded_rows else "")
        )
    if sparsity is not None and abs((1.0 - graph.density) - sparsity) > 1e-9:
        raise ValueError(f"factor product has sparsity {1 - graph.density:g}, not the requested {sparsity!r}")
    neighbors = graph.neighbors
    block = _trailing_block(graph)
    if input_shuffle > 1:  # move whole micro-blocks so they stay contiguous
        units = n // block[1]
        input_shuffle = largest_divisor(units, input_shuffle)
        neighbors = stride_permutation(n, input_shuffle, block[1])[neighbors]
    layout = GroupedLayout.from_neighbors(n, neighbors, _row_groups(graph), out_features=m)
    facts = {
        "factors": [f.summary() for f in graph.factors],
        "normalized_sigma2": graph.normalized_sigma2(),
        "spectral_gap": graph.spectral_gap(),
        "input_shuffle": input_shuffle,
        "groups": layout.groups,
        "rows_per_group": layout.rows_per_group,
        "padded_rows": layout.padded_rows,
        **(info or {}),
    }
    return SparseMask(kind, weight_shape, None, graph.storage_bytes() + 4, block, layout, graph, facts)


def _row_groups(graph: ProductGraph) -> np.ndarray:
    """Group id of every row: its coordinates in the non-complete factors (rows that differ only in
    complete factors read the same columns)."""
    ids = np.zeros(graph.m, dtype=np.int64)
    stride = graph.m
    u = np.arange(graph.m)
    for f in graph.factors:
        stride //= f.m
        if not f.is_complete:
            ids = ids * f.m + (u // stride) % f.m
    return ids


def _trailing_block(graph: ProductGraph) -> tuple[int, int]:
    """The dense micro-block of a product: the sizes of its trailing complete factors."""
    bh = bw = 1
    for f in reversed(graph.factors):
        if not f.is_complete:
            break
        bh, bw = bh * f.m, bw * f.n
    return bh, bw
