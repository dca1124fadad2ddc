"""Random bipartite graphs with prescribed degrees: configuration model + swap repair.

Stubs are matched by one random permutation; repeated edges (which the plain configuration model
produces in abundance at neural-network degrees) are then removed by degree-preserving swaps
(i, j), (i', j') -> (i, j'), (i', j), all proposals of a round processed at once in numpy.
The result has exactly the requested degrees and no multi-edges; research notes 2.1 found this
scheme's sigma2 distribution indistinguishable from exact uniform (rejection) sampling.
"""

from __future__ import annotations

import numpy as np

DENSE_COUNTER_MAX_CELLS = 1 << 28
"""Up to this many m*n cells, multiplicities live in a dense uint8 array (fast); beyond, in a
sorted key array re-sorted after every round."""

STALL_ROUNDS = 200
MAX_RESTARTS = 20


class SamplingError(RuntimeError):
    """The swap repair could not remove all repeated edges (only near-impossible degrees)."""


class _CellCounts:
    """Multiplicity of every (row, column) cell: dense array, or sorted keys for huge m*n."""

    def __init__(self, sorted_keys: np.ndarray, num_cells: int, max_count: int) -> None:
        self.dense = num_cells <= DENSE_COUNTER_MAX_CELLS
        if self.dense:
            starts = np.flatnonzero(np.diff(sorted_keys, prepend=-1))
            runs = np.diff(starts, append=len(sorted_keys))
            self.counts = np.zeros(num_cells, dtype=np.uint8 if max_count < 255 else np.uint32)
            self.counts[sorted_keys[starts]] = runs
        else:
            self.sorted_keys = sorted_keys.copy()

    def __call__(self, query: np.ndarray) -> np.ndarray:
        if self.dense:
            return self.counts[query]
        lo = np.searchsorted(self.sorted_keys, query, side="left")
        hi = np.searchsorted(self.sorted_keys, query, side="right")
        return hi - lo

    def update(self, decremented: np.ndarray, emptied: np.ndarray, filled: np.ndarray, keys: np.ndarray) -> None:
        """Surplus copies left `decremented` cells (repeats allowed); `emptied` cells lost their
        only edge; `filled` (unique) cells gained one."""
        if self.dense:
            np.subtract.at(self.counts, decremented, 1)
            self.counts[emptied] = 0
            self.counts[filled] = 1
        else:
            self.sorted_keys = np.sort(keys)


def _sort_within_rows(rows: np.ndarray, cols: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """Sort the column of each stub within its row (rows are ascending); returns new cols."""
    if len(r) and np.all(r == r[0]) and r[0] > 0:
        return np.sort(cols.reshape(len(r), int(r[0])), axis=1).ravel()  # fast, per row
    return np.sort(rows * n + cols) % n


def _unique_mask(values: np.ndarray) -> np.ndarray:
    """True where the value occurs exactly once in `values`."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def _first_valid_partners(
    bad: np.ndarray, rows: np.ndarray, cols: np.ndarray, counts: _CellCounts, n: int, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each bad stub e = (i, j), draw k random stubs f = (i', j') and keep the first with
    i != i', j != j', cells (i, j') and (i', j) empty and f's cell simple. Conditions are applied
    one at a time to shrink the candidate set (this loop is random-access bound)."""
    slot = np.arange(len(bad) * k, dtype=np.int64) // k  # which bad stub, candidates in order
    cand = rng.integers(0, len(rows), size=len(slot))
    i, j = rows[bad][slot], cols[bad][slot]
    j2 = cols[cand]
    keep = np.flatnonzero(j != j2)
    slot, cand, i, j, j2 = slot[keep], cand[keep], i[keep], j[keep], j2[keep]
    i2 = rows[cand]
    keep = np.flatnonzero((i != i2) & (counts(i * n + j2) == 0))
    slot, cand, i, j, i2, j2 = slot[keep], cand[keep], i[keep], j[keep], i2[keep], j2[keep]
    keep = np.flatnonzero(counts(i2 * n + j) == 0)
    slot, cand, i2, j2 = slot[keep], cand[keep], i2[keep], j2[keep]
    keep = counts(i2 * n + j2) == 1
    slot, cand = slot[keep], cand[keep]
    first_slot, first = np.unique(slot, return_index=True)  # slots stay ascending throughout
    return bad[first_slot], cand[first]


def _repair(rows: np.ndarray, cols: np.ndarray, m: int, n: int, max_count: int, rng: np.random.Generator) -> bool:
    """Swap surplus copies of repeated cells away, in place on `cols` (sorted within rows).
    False if no swap succeeded for STALL_ROUNDS rounds (a rare dead end in tiny dense graphs)."""
    keys = rows * n + cols
    counts = _CellCounts(keys, m * n, max_count)
    bad = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # keys are sorted: surplus = equal to previous
    idle = 0
    while len(bad):
        k = int(np.clip(65536 // len(bad), 2, 128))  # many candidates once few edges are bad
        e, f = _first_valid_partners(bad, rows, cols, counts, n, k, rng)
        new1 = rows[e] * n + cols[f]
        new2 = rows[f] * n + cols[e]
        both = _unique_mask(np.concatenate([new1, new2]))
        accept = both[: len(e)] & both[len(e) :] & _unique_mask(f)
        e, f, new1, new2 = e[accept], f[accept], new1[accept], new2[accept]
        decremented, emptied = keys[e], keys[f]
        cols[e], cols[f] = cols[f].copy(), cols[e].copy()
        keys[e], keys[f] = new1, new2
        counts.update(decremented, emptied, np.concatenate([new1, new2]), keys)
        # Unswapped bad stubs stay bad: their cell keeps one copy per remaining surplus stub.
        bad = np.setdiff1d(bad, e, assume_unique=True)
        idle = 0 if len(e) else idle + 1
        if idle >= STALL_ROUNDS:
            return False
    return True


def random_bipartite(
    row_degrees: np.ndarray, col_degrees: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Simple random bipartite graph with the given degree sequences, as CSR (indptr, indices).

    Restarts from a fresh stub matching (same generator) if the repair stalls; raises
    SamplingError after MAX_RESTARTS (degree sequences with few or no simple realisations).
    """
    r = np.asarray(row_degrees, np.int64)
    s = np.asarray(col_degrees, np.int64)
    m, n = len(r), len(s)
    if r.sum() != s.sum():
        raise ValueError(f"degree sums differ: rows {r.sum()} vs columns {s.sum()}")
    if np.any(r > n) or np.any(s > m) or np.any(r < 0) or np.any(s < 0):
        raise ValueError(f"degrees must lie in [0, n={n}] (rows) and [0, m={m}] (columns)")
    rows = np.repeat(np.arange(m, dtype=np.int64), r)
    stubs = np.repeat(np.arange(n, dtype=np.int64), s)
    max_count = int(min(r.max(initial=0), s.max(initial=0)))
    for _ in range(MAX_RESTARTS):
        # Stubs of a row are exchangeable, so sorting columns within rows loses nothing.
        cols = _sort_within_rows(rows, rng.permutation(stubs), r, n)
        if _repair(rows, cols, m, n, max_count, rng):
            indptr = np.zeros(m + 1, np.int64)
            np.cumsum(r, out=indptr[1:])
            return indptr, _sort_within_rows(rows, cols, r, n)
    raise SamplingError(
        f"swap repair stalled {MAX_RESTARTS} times for row degrees "
        f"{r.min()}..{r.max()}, column degrees {s.min()}..{s.max()}"
    )


def _complement_csr(m: int, n: int, indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.ones((m, n), dtype=bool)
    mask[np.repeat(np.arange(m), np.diff(indptr)), indices] = False
    degrees = mask.sum(axis=1)
    comp_indptr = np.zeros(m + 1, np.int64)
    np.cumsum(degrees, out=comp_indptr[1:])
    return comp_indptr, np.nonzero(mask)[1].astype(np.int64)


def random_biregular(m: int, n: int, c: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random simple (c, m c / n)-biregular m x n graph as CSR (indptr, indices).

    Above density 1/2 it samples the sparser (n - c)-regular complement and complements it:
    the same uniform law, far fewer collisions to repair.
    """
    d, rem = divmod(m * c, n)
    if rem:
        raise ValueError(f"no biregular graph: m*c = {m * c} is not a multiple of n = {n}")
    if 2 * c > n:
        return _complement_csr(m, n, *random_bipartite(np.full(m, n - c), np.full(n, m - d), rng))
    return random_bipartite(np.full(m, c), np.full(n, d), rng)
