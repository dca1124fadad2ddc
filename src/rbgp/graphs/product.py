"""ProductGraph: the bipartite graph product G1 (x) ... (x) Gk, kept as its factors.

The biadjacency of the product is kron(B1, ..., Bk): left vertex u = (u1, ..., uk) in mixed
radix (u = u1 |L2..Lk| + ...), right vertices likewise, and u ~ v iff ui ~ vi for every i.
Degrees, sizes and densities multiply; singular values are all products of the factors', so the
normalised second singular value is the maximum over the factors and nothing large is ever built
to compute it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from functools import reduce
from typing import Any

import numpy as np
import scipy.sparse as sp

from .bipartite import BipartiteGraph, degree_bound, ramanujan_rule


class ProductGraph:
    """Succinct bipartite graph product of BipartiteGraph factors (immutable)."""

    def __init__(self, *factors: BipartiteGraph | Iterable[BipartiteGraph]) -> None:
        """ProductGraph(g1, g2, ...) or ProductGraph([g1, g2, ...])."""
        if len(factors) == 1 and not isinstance(factors[0], BipartiteGraph):
            factors = tuple(factors[0])
        if not factors:
            raise ValueError("a product needs at least one factor graph, got none")
        for pos, f in enumerate(factors):
            if not isinstance(f, BipartiteGraph):
                raise ValueError(f"factor {pos} must be a BipartiteGraph, got {type(f).__name__}: {f!r}")
        object.__setattr__(self, "factors", factors)

    factors: tuple[BipartiteGraph, ...]

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"ProductGraph is immutable (cannot set {key!r})")

    def __repr__(self) -> str:
        return f"ProductGraph({self.name}, m={self.m}, n={self.n})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProductGraph):
            return NotImplemented
        return self.factors == other.factors

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    # ------------------------------------------------------------------ structure
    @property
    def name(self) -> str:
        return " (x) ".join(f.name or f"{f.m}x{f.n}" for f in self.factors)

    @property
    def m(self) -> int:
        return math.prod(f.m for f in self.factors)

    @property
    def n(self) -> int:
        return math.prod(f.n for f in self.factors)

    @property
    def num_edges(self) -> int:
        return math.prod(f.num_edges for f in self.factors)

    @property
    def density(self) -> float:
        return math.prod(f.density for f in self.factors)

    @property
    def is_left_regular(self) -> bool:
        return all(f.is_left_regular for f in self.factors)

    @property
    def is_biregular(self) -> bool:
        return all(f.is_biregular for f in self.factors)

    @property
    def is_complete(self) -> bool:
        return all(f.is_complete for f in self.factors)

    @property
    def left_degree(self) -> int:
        """Product of the factors' left degrees (ValueError if a factor is not left-regular)."""
        return math.prod(f.left_degree for f in self.factors)

    @property
    def right_degree(self) -> int:
        """Product of the factors' right degrees (ValueError if one is not right-regular)."""
        return math.prod(f.right_degree for f in self.factors)

    def left_degrees(self) -> np.ndarray:
        return reduce(np.kron, [f.left_degrees() for f in self.factors])

    def right_degrees(self) -> np.ndarray:
        return reduce(np.kron, [f.right_degrees() for f in self.factors])

    @property
    def neighbors(self) -> np.ndarray:
        """(m, c) int64 sorted neighbour lists, built from the factors' lists (no dense matrix)."""
        nb = np.zeros((1, 1), dtype=np.int64)
        for f in self.factors:
            fn = f.neighbors  # requires left-regular factors
            nb = (nb[:, None, :, None] * f.n + fn[None, :, None, :]).reshape(
                nb.shape[0] * f.m, nb.shape[1] * fn.shape[1]
            )
        return nb

    def biadjacency(self) -> np.ndarray:
        """Dense boolean kron(B1, ..., Bk)."""
        return reduce(np.kron, [f.biadjacency() for f in self.factors]).astype(bool)

    def to_graph(self) -> BipartiteGraph:
        """The product materialised as a BipartiteGraph (CSR)."""
        if self.is_left_regular:
            return BipartiteGraph.from_neighbors(self.n, self.neighbors, name=self.name)
        mats = [
            sp.csr_matrix((np.ones(f.num_edges, np.int8), f.indices, f.indptr), shape=(f.m, f.n)) for f in self.factors
        ]
        prod = reduce(lambda a, b: sp.kron(a, b, format="csr"), mats)
        prod.sort_indices()
        return BipartiteGraph(self.m, self.n, prod.indptr, prod.indices, name=self.name)

    # ------------------------------------------------------------------ spectrum (from factors)
    def sigma1(self) -> float:
        return math.prod(f.sigma1() for f in self.factors)

    def normalized_sigma2(self) -> float:
        """max over factors of sigma2/sigma1 (exact: kron singular values are products)."""
        return max(f.normalized_sigma2() for f in self.factors)

    def sigma2(self) -> float:
        return self.sigma1() * self.normalized_sigma2()

    def spectral_gap(self) -> float:
        return 1.0 - self.normalized_sigma2()

    def ramanujan_bound(self) -> float:
        """sqrt(c-1) + sqrt(d-1) for the product's degrees (average degrees if irregular)."""
        if self.is_biregular:
            return degree_bound(self.left_degree, self.right_degree)
        edges = self.num_edges
        return degree_bound(edges / self.m, edges / self.n) if self.m and self.n else 0.0

    def margin(self) -> float:
        return self.ramanujan_bound() - self.sigma2()

    def is_ramanujan(self) -> bool:
        """Same rule as BipartiteGraph; a disconnected factor makes sigma2 == sigma1 (False)."""
        return ramanujan_rule(self.sigma1(), self.sigma2(), self.ramanujan_bound())

    # ------------------------------------------------------------------ identity & storage
    def storage_bytes(self) -> int:
        """Sum of the factors' succinct storage."""
        return sum(f.storage_bytes() for f in self.factors)

    def fingerprint(self) -> str:
        """sha256 over the factors' fingerprints, in order."""
        h = hashlib.sha256()
        for f in self.factors:
            h.update(f.fingerprint().encode("ascii"))
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Like BipartiteGraph.summary, with the product's figures and per-factor summaries."""

        def degree(side: str) -> int | list[int]:
            try:
                return self.left_degree if side == "left" else self.right_degree
            except ValueError:
                degs = self.left_degrees() if side == "left" else self.right_degrees()
                return [int(degs.min()), int(degs.max())]

        return {
            "name": self.name,
            "m": self.m,
            "n": self.n,
            "left_degree": degree("left"),
            "right_degree": degree("right"),
            "num_edges": self.num_edges,
            "density": self.density,
            "sigma1": self.sigma1(),
            "sigma2": self.sigma2(),
            "bound": self.ramanujan_bound(),
            "margin": self.margin(),
            "normalized_sigma2": self.normalized_sigma2(),
            "ramanujan": bool(self.is_ramanujan()),
            "storage_bytes": self.storage_bytes(),
            "factors": [f.summary() for f in self.factors],
        }


def product(*graphs: BipartiteGraph) -> ProductGraph:
    """G1 (x) ... (x) Gk as a ProductGraph (ValueError if empty or a non-BipartiteGraph)."""
    return ProductGraph(*graphs)
