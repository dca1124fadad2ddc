"""BipartiteGraph: an immutable bipartite graph stored as CSR rows, with its spectral figures.

Left vertices are the m outputs (rows of a weight mask), right vertices the n inputs (columns).
"""

from __future__ import annotations

import hashlib
import math
from functools import cached_property
from numbers import Integral
from typing import Any

import numpy as np

from . import spectral

RAMANUJAN_RTOL = 1e-9
"""Relative tolerance (times sigma1) of the Ramanujan and connectivity tests."""


def require_int(value: Any, what: str, minimum: int = 0) -> int:
    """`value` as an int >= minimum, or a ValueError naming `what` and the bad value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_index_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=True)
    out.setflags(write=False)
    return out


def ramanujan_rule(sigma1: float, sigma2: float, bound: float) -> bool:
    """sigma2 within the bound (relative slack 1e-9) and sigma2 < sigma1 (connected)."""
    return sigma2 <= bound + RAMANUJAN_RTOL * sigma1 and sigma2 < sigma1 * (1 - RAMANUJAN_RTOL)


def degree_bound(c: float, d: float) -> float:
    """sqrt(c-1) + sqrt(d-1): the spectral radius of the (c, d)-biregular tree."""
    return math.sqrt(max(c - 1.0, 0.0)) + math.sqrt(max(d - 1.0, 0.0))


class BipartiteGraph:
    """Immutable bipartite graph G = (L, R, E), |L| = m rows, |R| = n columns, CSR adjacency.

    `indptr` (m+1,) and `indices` (num_edges,) follow scipy's CSR convention; the column indices
    of every row are sorted and unique. Spectral figures are computed lazily and cached.
    """

    def __init__(self, m: int, n: int, indptr: np.ndarray, indices: np.ndarray, name: str = "") -> None:
        m = require_int(m, "m (number of rows)")
        n = require_int(n, "n (number of columns)")
        indptr = _as_index_array(indptr, "indptr")
        indices = _as_index_array(indices, "indices")
        if indptr.shape != (m + 1,):
            raise ValueError(f"indptr must have length m+1 = {m + 1}, got {indptr.shape[0]}")
        if indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0, got {indptr[0]}")
        steps = np.diff(indptr)
        if np.any(steps < 0):
            row = int(np.argmax(steps < 0))
            raise ValueError(
                f"indptr must be non-decreasing; it drops at row {row}: {indptr[row]} -> {indptr[row + 1]}"
            )
        if indptr[-1] != len(indices):
            raise ValueError(f"indptr[-1] = {indptr[-1]} must equal len(indices) = {len(indices)}")
        if len(indices):
            bad = (indices < 0) | (indices >= n)
            if np.any(bad):
                raise ValueError(f"column index {indices[np.argmax(bad)]} out of range [0, {n})")
            gaps = np.diff(indices)
            within_row = np.ones(len(gaps), bool)
            starts = indptr[1:-1]
            starts = starts[(starts > 0) & (starts < len(indices))]
            within_row[starts - 1] = False
            bad = within_row & (gaps <= 0)
            if np.any(bad):
                pos = int(np.argmax(bad))
                row = int(np.searchsorted(indptr, pos, side="right") - 1)
                raise ValueError(
                    f"column indices of row {row} must be sorted and unique; "
                    f"found {indices[pos]} followed by {indices[pos + 1]}"
                )
        if not isinstance(name, str):
            raise ValueError(f"name must be a string, got {name!r}")
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "name", name)

    m: int
    n: int
    indptr: np.ndarray
    indices: np.ndarray
    name: str

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"BipartiteGraph is immutable (cannot set {key!r})")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"BipartiteGraph is immutable (cannot delete {key!r})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_neighbors(cls, n: int, neighbors: np.ndarray, name: str = "") -> BipartiteGraph:
        """Left-regular graph from an (m, c) array: row u's right-neighbours, any order."""
        nb = np.asarray(neighbors)
        if nb.ndim != 2:
            raise ValueError(f"neighbors must be a 2-D (m, c) array, got shape {nb.shape}")
        if nb.size and not np.issubdtype(nb.dtype, np.integer):
            raise ValueError(f"neighbors must hold integers, got dtype {nb.dtype}")
        m, c = nb.shape
        nb = np.sort(nb.astype(np.int64), axis=1)
        if c > 1:
            dup = nb[:, 1:] == nb[:, :-1]
            if np.any(dup):
                row = int(np.argmax(dup.any(axis=1)))
                col = int(nb[row, 1:][dup[row]][0])
                raise ValueError(f"row {row} lists neighbour {col} more than once")
        indptr = np.arange(m + 1, dtype=np.int64) * c
        return cls(m, n, indptr, nb.ravel(), name=name)

    @classmethod
    def from_biadjacency(cls, B: np.ndarray, name: str = "") -> BipartiteGraph:
        """Graph of a 0/1 (or boolean) m x n biadjacency matrix."""
        A = np.asarray(B)
        if A.ndim != 2:
            raise ValueError(f"biadjacency must be 2-D, got shape {A.shape}")
        if A.dtype != bool:
            if not (np.issubdtype(A.dtype, np.number)):
                raise ValueError(f"biadjacency must be boolean or numeric 0/1, got {A.dtype}")
            bad = (A != 0) & (A != 1)
            if np.any(bad):
                raise ValueError(f"biadjacency entries must be 0 or 1, found {A[bad].flat[0]!r}")
            A = A != 0
        m, n = A.shape
        rows, cols = np.nonzero(A)  # row-major order: sorted within each row
        indptr = np.zeros(m + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
        return cls(m, n, indptr, cols, name=name)

    # ------------------------------------------------------------------ structure
    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"BipartiteGraph({label}m={self.m}, n={self.n}, edges={self.num_edges})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BipartiteGraph):
            return NotImplemented
        return (
            (self.m, self.n) == (other.m, other.n)
            and np.array_equal(self.indptr, other.indptr)
            and np.array_equal(self.indices, other.indices)
        )

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    @property
    def num_edges(self) -> int:
        return int(self.indptr[-1])

    @property
    def density(self) -> float:
        return self.num_edges / (self.m * self.n) if self.m * self.n else 0.0

    def left_degrees(self) -> np.ndarray:
        return np.diff(self.indptr)

    def right_degrees(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.n).astype(np.int64)

    @cached_property
    def _left_range(self) -> tuple[int, int]:
        deg = self.left_degrees()
        return (int(deg.min()), int(deg.max())) if self.m else (0, 0)

    @cached_property
    def _right_range(self) -> tuple[int, int]:
        deg = self.right_degrees()
        return (int(deg.min()), int(deg.max())) if self.n else (0, 0)

    @property
    def is_left_regular(self) -> bool:
        lo, hi = self._left_range
        return lo == hi

    @property
    def is_right_regular(self) -> bool:
        lo, hi = self._right_range
        return lo == hi

    @property
    def is_biregular(self) -> bool:
        return self.is_left_regular and self.is_right_regular

    @property
    def left_degree(self) -> int:
        """Common degree c of every row (fan-in); ValueError when rows differ."""
        lo, hi = self._left_range
        if lo != hi:
            raise ValueError(f"graph is not left-regular: row degrees range over {lo}..{hi}")
        return lo

    @property
    def right_degree(self) -> int:
        """Common degree d of every column (fan-out); ValueError when columns differ."""
        lo, hi = self._right_range
        if lo != hi:
            raise ValueError(f"graph is not right-regular: column degrees range over {lo}..{hi}")
        return lo

    @property
    def neighbors(self) -> np.ndarray:
        """(m, c) int64 array of each row's sorted right-neighbours (left-regular graphs)."""
        return self.indices.reshape(self.m, self.left_degree)

    @property
    def is_complete(self) -> bool:
        return self.num_edges == self.m * self.n

    def biadjacency(self) -> np.ndarray:
        """Dense boolean (m, n) biadjacency matrix (a fresh array)."""
        B = np.zeros((self.m, self.n), dtype=bool)
        rows = np.repeat(np.arange(self.m), self.left_degrees())
        B[rows, self.indices] = True
        return B

    def transpose(self) -> BipartiteGraph:
        """The same graph with sides swapped (n x m)."""
        rows = np.repeat(np.arange(self.m, dtype=np.int64), self.left_degrees())
        order = np.argsort(self.indices, kind="stable")  # keeps rows ascending per column
        indptr = np.zeros(self.n + 1, np.int64)
        np.cumsum(self.right_degrees(), out=indptr[1:])
        name = f"{self.name}^T" if self.name else ""
        return BipartiteGraph(self.n, self.m, indptr, rows[order], name=name)

    def complement(self, name: str = "") -> BipartiteGraph:
        """J - B: (n-c, m-d)-biregular if B is (c, d)-biregular, with the same nontrivial
        singular values (J vanishes on the complement of the constant vectors)."""
        return BipartiteGraph.from_biadjacency(~self.biadjacency(), name=name)

    # ------------------------------------------------------------------ spectrum
    @cached_property
    def _irregular_top2(self) -> tuple[float, float]:
        return spectral.top_two_singular_values(self.m, self.n, self.indptr, self.indices)

    @cached_property
    def _sigma1(self) -> float:
        if self.is_biregular:
            return math.sqrt(self.left_degree * self.right_degree)
        return self._irregular_top2[0]

    @cached_property
    def _sigma2(self) -> float:
        if self.is_biregular:
            return spectral.biregular_sigma2(
                self.m, self.n, self.indptr, self.indices, self.left_degree, self.right_degree
            )
        return self._irregular_top2[1]

    def sigma1(self) -> float:
        """Largest singular value: sqrt(c d) exactly when biregular."""
        return self._sigma1

    def sigma2(self) -> float:
        """Second singular value (deflated Gram when biregular, top-2 Gram eigenvalues if not)."""
        return self._sigma2

    def normalized_sigma2(self) -> float:
        """sigma2 / sigma1 in [0, 1]; 1.0 for an edgeless graph (no mixing at all)."""
        s1 = self.sigma1()
        return min(self.sigma2() / s1, 1.0) if s1 > 0 else 1.0

    def spectral_gap(self) -> float:
        return 1.0 - self.normalized_sigma2()

    def ramanujan_bound(self) -> float:
        """sqrt(c-1) + sqrt(d-1), with average degrees when the graph is not biregular."""
        if self.is_biregular:
            return degree_bound(self.left_degree, self.right_degree)
        if self.m == 0 or self.n == 0:
            return 0.0
        return degree_bound(self.num_edges / self.m, self.num_edges / self.n)

    def margin(self) -> float:
        """bound - sigma2: positive for Ramanujan graphs."""
        return self.ramanujan_bound() - self.sigma2()

    def is_ramanujan(self) -> bool:
        """sigma2 <= bound (+1e-9 sigma1) and sigma2 < sigma1 (so the graph is connected)."""
        return ramanujan_rule(self.sigma1(), self.sigma2(), self.ramanujan_bound())

    # ------------------------------------------------------------------ identity & storage
    def fingerprint(self) -> str:
        """sha256 of (m, n, indptr, indices) as little-endian int64: a structural identity."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.array([self.m, self.n], dtype="<i8").tobytes())
        h.update(self.indptr.astype("<i8").tobytes())
        h.update(self.indices.astype("<i8").tobytes())
        return h.hexdigest()

    def storage_bytes(self) -> int:
        """Bytes of a succinct structure: 8 if complete (two sizes), int32 neighbour lists if
        left-regular, else int32 CSR."""
        if self.is_complete:
            return 8
        if self.is_left_regular:
            return 4 * self.m * self.left_degree
        return 4 * (self.m + 1 + self.num_edges)

    def summary(self) -> dict[str, Any]:
        """Plain-python dict of size, degrees (int or [min, max]), density and spectrum."""
        left = self.left_degree if self.is_left_regular else list(self._left_range)
        right = self.right_degree if self.is_right_regular else list(self._right_range)
        return {
            "name": self.name,
            "m": self.m,
            "n": self.n,
            "left_degree": left,
            "right_degree": right,
            "num_edges": self.num_edges,
            "density": self.density,
            "sigma1": self.sigma1(),
            "sigma2": self.sigma2(),
            "bound": self.ramanujan_bound(),
            "margin": self.margin(),
            "normalized_sigma2": self.normalized_sigma2(),
            "ramanujan": bool(self.is_ramanujan()),
        }
