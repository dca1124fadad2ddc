"""Certified iterated 2-lifts of K_{k,l} (the RBGP paper's family, with a spectral check).

A 2-lift of B by a signing s (signed matrix B_s) is [[B+, B-], [B-, B+]] with B+- = (B +- B_s)/2.
Its spectrum is spec(B) union spec(B_s) (Bilu-Linial), so accepting only signings with
sigma_max(B_s) <= sqrt(k-1) + sqrt(l-1) keeps every level Ramanujan; MSS prove such a signing
exists, and random ones pass within a few draws (research notes 2.2). Shape (k 2^L) x (l 2^L),
degrees (l, k), density 2^-L.
"""

from __future__ import annotations

import math

import numpy as np

from . import spectral
from .random_biregular import SamplingError

MAX_SIGNINGS_PER_LEVEL = 64


def lift_shape_error(m: int, n: int, c: int) -> str | None:
    """Why an m x n graph with left degree c does not fit 2-lifts of K_{k,l}, or None."""
    supported = (
        "the lift construction supports shapes (k*2^L) x (l*2^L) with left degree l "
        "and L >= 1 (density 2^-L: 1/2, 1/4, ...)"
    )
    ratio, rem = divmod(n, c)
    if rem or ratio < 2 or ratio & (ratio - 1):
        return f"{supported}; here n/left_degree = {n}/{c} is not a power of two >= 2"
    if m % ratio:
        return f"{supported}; here m = {m} is not a multiple of 2^L = {ratio}"
    return None


def certified_2lifts(k: int, l: int, levels: int, rng: np.random.Generator) -> np.ndarray:
    """(k 2^L, l) sorted neighbour lists of `levels` accepted random 2-lifts of K_{k,l}.

    Raises SamplingError when a level finds no acceptable signing in MAX_SIGNINGS_PER_LEVEL draws.
    """
    bound = math.sqrt(k - 1) + math.sqrt(l - 1)
    nb = np.tile(np.arange(l, dtype=np.int64), (k, 1))
    rows_n, cols_n = k, l
    for level in range(levels):
        indptr = np.arange(rows_n + 1, dtype=np.int64) * l
        for _ in range(MAX_SIGNINGS_PER_LEVEL):
            signs = rng.integers(0, 2, size=nb.shape, dtype=np.int64) * 2 - 1
            signed = spectral.csr_matrix(rows_n, cols_n, indptr, nb.ravel(), signs.ravel())
            if spectral.top_singular_value(signed) <= bound * (1 + 1e-12):
                break
        else:
            raise SamplingError(
                f"no signing within the bound {bound:.4g} at lift level "
                f"{level + 1} after {MAX_SIGNINGS_PER_LEVEL} draws"
            )
        top = np.where(signs > 0, nb, nb + cols_n)
        bottom = np.where(signs > 0, nb + cols_n, nb)
        nb = np.sort(np.vstack([top, bottom]), axis=1)
        rows_n, cols_n = 2 * rows_n, 2 * cols_n
    return nb
