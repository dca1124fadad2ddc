"""Affine-plane (array-code) lift over GF(q): a deterministic, provably good expander.

Row (i, a) ~ column (j, b) iff b = a + alpha_i * beta_j in GF(q), for i < k, j < l, a, b in GF(q).
Every q x q block is a translation (permutation) matrix, so the graph is a q-lift of K_{k,l}:
shape (k q) x (l q), degrees (l, k), density 1/q. Its nontrivial singular values are those of the
character matrices [psi(alpha_i beta_j)], hence sigma2 <= sqrt(q) (research notes 2.3a), about
half the Ramanujan bound, and two rows share at most one column (no 4-cycles).

The lift itself has no seed; `ramanujan(..., method="algebraic")` relabels its rows and columns by
seeded random permutations (`constructions.relabel_neighbors`), which keeps all of the above.
"""

from __future__ import annotations

import numpy as np

from .galois import IRREDUCIBLE_POLYNOMIALS, GaloisField, is_field_order


def affine_shape_error(m: int, n: int, c: int) -> str | None:
    """Why an m x n graph with left degree c does not fit the affine lift, or None if it does."""
    supported = (
        f"the algebraic construction supports shapes (k*q) x (l*q) with left degree "
        f"l, where q = n/left_degree is prime or a power of two (up to "
        f"2^{max(IRREDUCIBLE_POLYNOMIALS)}) and k, l <= q (density 1/q)"
    )
    if n % c:
        return f"{supported}; here q = n/left_degree = {n}/{c} is not an integer"
    q = n // c
    if not is_field_order(q):
        return f"{supported}; here q = {n}/{c} = {q} is neither prime nor a power of two"
    if m % q:
        return f"{supported}; here m = {m} is not a multiple of q = {q}"
    k = m // q
    if k > q or c > q:
        return f"{supported}; here k = m/q = {k} and l = {c} must both be <= q = {q}"
    return None


def affine_neighbors(field: GaloisField, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """(k q, l) sorted neighbour lists: row i*q + a -> columns j*q + (a + alpha_i beta_j)."""
    q, k, l = field.q, len(alphas), len(betas)
    products = field.mul(np.asarray(alphas)[:, None], np.asarray(betas)[None, :])  # (k, l)
    a = np.arange(q, dtype=np.int64)
    b = field.add(a[None, :, None], products[:, None, :])  # (k, q, l)
    return (b + q * np.arange(l, dtype=np.int64)).reshape(k * q, l)


def affine_multipliers(
    field: GaloisField, k: int, l: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct alphas (k) and betas (l). Canonical (rng None): 0, 1, x, x^2, ... whose short
    prefixes already span GF(q) additively (a proper additive subgroup would disconnect the
    graph); otherwise random distinct elements drawn from rng."""
    if rng is None:
        order = field.spanning_order()
        return order[:k].copy(), order[:l].copy()
    return rng.permutation(field.q)[:k], rng.permutation(field.q)[:l]


def affine_lift(m: int, n: int, c: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Neighbour lists (m, c) of the affine lift of shape m x n with left degree c, and q."""
    reason = affine_shape_error(m, n, c)
    if reason:
        raise ValueError(reason)
    q = n // c
    field = GaloisField(q)
    alphas, betas = affine_multipliers(field, m // q, c, rng)
    return affine_neighbors(field, alphas, betas), q
