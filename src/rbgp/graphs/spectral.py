"""Singular-value computations for 0/1 (or signed) biadjacency matrices.

Everything works on the Gram matrix of the smaller side, G = S S^T or S^T S, whose top eigenvalues
are the squared top singular values. For a (c, d)-biregular matrix the top pair is known exactly
(sigma1 = sqrt(c d), constant singular vectors), so subtracting (c d / s) J deflates it and one
top eigenvalue of the deflated Gram gives sigma2 = ||B - (c/n) 1 1^T||_2. That is robust where
`svds` is not (degenerate spectra, sigma1 >> sigma2). Small sides use a dense Gram, exact in float32
because its entries are integers, and LAPACK; large sides use Lanczos (`eigsh`) on a
LinearOperator, with the dense path as a fallback if ARPACK fails.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

Method = Literal["auto", "dense", "lanczos"]

DENSE_MAX_SIDE = 512
"""Largest smaller-side size for which `auto` uses the dense Gram + LAPACK path; beyond it Lanczos
is faster (`benchmarks/ramanujan_timing.json` times the builders)."""

LANCZOS_TOL = 1e-11
_V0_SEED = 20240607  # fixed Lanczos start vector: identical floats on every run


def csr_matrix(
    m: int, n: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray | None = None
) -> sp.csr_matrix:
    """scipy CSR view of a structure (ones unless `data` is given), float64."""
    values = np.ones(len(indices)) if data is None else np.asarray(data, np.float64)
    return sp.csr_matrix((values, indices, indptr), shape=(m, n))


def _check_method(method: str) -> None:
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"unknown method {method!r}: use 'auto', 'dense' or 'lanczos'")


DENSE_GRAM_MAX_ENTRIES = 1 << 24


def _dense_gram(S: sp.csr_matrix) -> np.ndarray:
    """Gram matrix of the smaller side as a dense float64 array. BLAS in float32 when S fits
    (exact: the entries are small integers), else a sparse product (e.g. 512 x 10^6)."""
    left = S.shape[0] <= S.shape[1]
    if S.shape[0] * S.shape[1] <= DENSE_GRAM_MAX_ENTRIES:
        A = S.toarray().astype(np.float32)
        return (A @ A.T if left else A.T @ A).astype(np.float64)
    return (S @ S.T if left else S.T @ S).toarray()


def _dense_top_eigenvalues(S: sp.csr_matrix, shift: float, k: int) -> np.ndarray:
    G = _dense_gram(S)
    if shift:
        G -= shift
    # Full eigvalsh: cheap at these sizes, and LAPACK's subset drivers (evr) can fail with
    # "Internal Error" on highly degenerate spectra such as perfect matchings.
    return np.linalg.eigvalsh(G)[::-1][:k]


def _lanczos_top_eigenvalues(S: sp.csr_matrix, shift: float, k: int) -> np.ndarray:
    m, n = S.shape
    St = S.T.tocsr()
    if n <= m:  # G = S^T S on the right side
        inner, outer, s = S, St, n
    else:  # G = S S^T on the left side
        inner, outer, s = St, S, m

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        y = outer @ (inner @ x)
        if shift:
            y -= shift * x.sum()
        return y

    op = LinearOperator((s, s), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(_V0_SEED).standard_normal(s)
    if shift:
        v0 -= v0.mean()  # start orthogonal to the deflated constant vector
    vals = eigsh(
        op,
        k=k,
        which="LA",
        tol=LANCZOS_TOL,
        v0=v0,
        ncv=min(s, max(2 * k + 1, 24)),
        return_eigenvectors=False,
        maxiter=20 * s,
    )
    return np.sort(vals)[::-1]


def top_gram_eigenvalues(S: sp.csr_matrix, k: int = 1, shift: float = 0.0, method: Method = "auto") -> np.ndarray:
    """Top-k eigenvalues (descending) of the smaller-side Gram of S minus `shift` * all-ones."""
    _check_method(method)
    s = min(S.shape)
    if s == 0:
        return np.zeros(k)
    use_dense = method == "dense" or (method == "auto" and s <= DENSE_MAX_SIDE) or s <= k + 1
    if not use_dense:
        try:
            return _lanczos_top_eigenvalues(S, shift, k)
        except (ArpackError, ArpackNoConvergence):
            pass  # degenerate spectra can trip ARPACK; the dense path is always correct
    vals = _dense_top_eigenvalues(S, shift, k)
    return np.concatenate([vals, np.zeros(k - len(vals))])


def _sqrt_nonneg(x: float) -> float:
    return float(np.sqrt(max(float(x), 0.0)))


def biregular_sigma2(
    m: int,
    n: int,
    indptr: np.ndarray,
    indices: np.ndarray,
    c: int,
    d: int,
    method: Method = "auto",
) -> float:
    """sigma2 = ||B - (c/n) 1 1^T||_2 of a (c, d)-biregular m x n graph.

    Above density 1/2 the sparser complement J - B is used: it has the same deflated matrix up to
    sign, hence the same sigma2.
    """
    _check_method(method)
    if min(m, n) <= 1 or c in (0, n):
        return 0.0
    if 2 * c > n:
        mask = np.ones((m, n), dtype=bool)
        mask[np.repeat(np.arange(m), np.diff(indptr)), indices] = False
        S = sp.csr_matrix(mask, dtype=np.float64)
        c, d = n - c, m - d
    else:
        S = csr_matrix(m, n, indptr, indices)
    s = min(m, n)
    top = top_gram_eigenvalues(S, k=1, shift=c * d / s, method=method)[0]
    return _sqrt_nonneg(top)


def top_two_singular_values(
    m: int, n: int, indptr: np.ndarray, indices: np.ndarray, method: Method = "auto"
) -> tuple[float, float]:
    """(sigma1, sigma2) of any 0/1 matrix, for irregular graphs (no deflation possible).

    Small matrices use a dense SVD: a Gram matrix would hold sigma1^2 and so lose sigma2 to
    rounding (absolute error ~ sqrt(eps) sigma1) when sigma2 << sigma1.
    """
    _check_method(method)
    if min(m, n) == 0 or len(indices) == 0:
        return 0.0, 0.0
    S = csr_matrix(m, n, indptr, indices)
    if method == "dense" or (method == "auto" and min(m, n) <= DENSE_MAX_SIDE) or min(m, n) <= 3:
        sv = np.concatenate([np.linalg.svd(S.toarray(), compute_uv=False), [0.0]])
        return float(sv[0]), float(sv[1])
    vals = top_gram_eigenvalues(S, k=2, method=method)
    second = _sqrt_nonneg(vals[1]) if min(m, n) > 1 else 0.0
    return _sqrt_nonneg(vals[0]), second


def top_singular_value(S: sp.csr_matrix, method: Method = "auto") -> float:
    """Largest singular value of a (signed) sparse matrix, e.g. a 2-lift's signing."""
    if min(S.shape) == 0 or S.nnz == 0:
        return 0.0
    return _sqrt_nonneg(top_gram_eigenvalues(S, k=1, method=method)[0])
