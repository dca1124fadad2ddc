"""Bipartite graphs for sparse-layer connectivity (numpy/scipy only, no torch).

A layer's 0/1 mask is the biadjacency matrix of a bipartite graph (rows = outputs, columns =
inputs). This package builds such graphs (complete, verified Ramanujan), their Kronecker products
(RBGP patterns), and measures their spectra and end-to-end connectivity.
"""

from .bipartite import BipartiteGraph
from .connectivity import path_coverage
from .constructions import (
    RamanujanError,
    RamanujanWarning,
    complete,
    near_biregular,
    ramanujan,
)
from .product import ProductGraph, product

__all__ = [
    "BipartiteGraph",
    "ProductGraph",
    "RamanujanError",
    "RamanujanWarning",
    "complete",
    "near_biregular",
    "path_coverage",
    "product",
    "ramanujan",
]
