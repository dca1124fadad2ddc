"""Cost models of the patterns' builders: the peak memory (bytes) and rough time a `build` needs, from
the shape and sparsity alone (closed forms, no allocation), checked against the limit of
`rbgp.resources` before anything is built. The estimates are calibrated upper-ish bounds of the
measured peaks (tracemalloc) of this package's builders, not exact figures; the time is an order of
magnitude.
"""

from __future__ import annotations

from rbgp.resources import (  # noqa: F401  (re-exported: the patterns' one import of the limits)
    ENV_VAR,
    Cost,
    ResourceError,
    check,
    cost,
    format_bytes,
    memory_limit,
    parse_size,
)

OVERHEAD_BYTES = 1 << 20
"""Added to every builder's estimate: small arrays, Python objects, rounding of the per-cell figures."""


# ---------------------------------------------------------------- cost models (bytes, from measured peaks)
def dense_mask_cost(m: int, n: int, bytes_per_cell: float, seconds_per_cell: float) -> Cost:
    """A builder that works on the dense m x n mask with `bytes_per_cell` of peak memory."""
    cells = m * n
    return cost(OVERHEAD_BYTES + bytes_per_cell * cells, seconds_per_cell * cells)


def graph_cost(m: int, n: int, c: int, draws: int = 1) -> Cost:
    """Building and verifying an m x n graph with left degree c (random biregular, the near-biregular
    search with `draws` draws, or the cheaper algebraic lift): about 160 bytes a sampled edge (stubs,
    swap repair, CSR checks, spectral operators), the dense cell counter (1 byte a cell up to 2^28
    cells), the dense complement above density 1/2, and a dense Gram when the smaller side is small."""
    if c >= n:
        return Cost(16 * (m + 1) + 16 * m * n, 0.0)  # complete: index arrays only
    cells = m * n
    edges = m * min(c, n - c)  # the sparser side is what gets sampled
    nbytes = 160 * edges + (cells if cells <= 1 << 28 else 8 * edges)
    if 2 * c > n:
        nbytes += 24 * cells
    side = min(m, n)
    if side <= 512:
        nbytes += 24 * side * side + (8 * cells if cells <= 1 << 24 else 0)
    seconds = 1e-6 * edges * draws + 2e-7 * (cells if 2 * c > n else 0)
    return Cost(int(nbytes), seconds)


def product_layout_cost(rows: int, nnz_per_row: int) -> Cost:
    """Product neighbour lists and the grouped layout built from them: about four int64 arrays of
    rows x nnz_per_row (the lists, sorted and gathered copies) and a bool comparison."""
    entries = rows * nnz_per_row
    return cost(OVERHEAD_BYTES + 34 * entries, 6e-8 * entries)
