"""Spectral paths: dense Gram and Lanczos agree, and both match numpy's SVD."""

import math

import numpy as np
import pytest
import scipy.sparse

from rbgp.graphs import BipartiteGraph, ramanujan, spectral
from rbgp.graphs.random_biregular import random_biregular


def _both_paths(g: BipartiteGraph) -> tuple[float, float]:
    args = (g.m, g.n, g.indptr, g.indices, g.left_degree, g.right_degree)
    return (spectral.biregular_sigma2(*args, method="dense"),
            spectral.biregular_sigma2(*args, method="lanczos"))


@pytest.mark.parametrize(
    "m, n, c, method",
    [
        (600, 300, 20, "random"),  # rectangular, left side larger
        (300, 600, 40, "random"),  # rectangular, right side larger
        (1024, 1024, 32, "algebraic"),  # AG(2, 32): every nontrivial sigma equals sqrt(32)
        (640, 640, 480, "random"),  # density 3/4: complement path inside biregular_sigma2
        (1024, 512, 256, "random"),  # density 1/2
    ],
)
def test_dense_and_lanczos_agree(m, n, c, method):
    g = ramanujan(m, n, c, method=method, seed=5)
    dense, lanczos = _both_paths(g)
    assert lanczos == pytest.approx(dense, rel=1e-9)
    assert g.sigma2() == pytest.approx(dense, rel=1e-9)
    if m <= 640:
        s = np.linalg.svd(g.biadjacency().astype(float), compute_uv=False)
        assert dense == pytest.approx(s[1], rel=1e-9)
    if method == "algebraic":
        assert dense == pytest.approx(math.sqrt(n // c), rel=1e-12)


def test_auto_picks_path_by_size(monkeypatch):
    g = BipartiteGraph(700, 700, *random_biregular(700, 700, 20, np.random.default_rng(0)))
    calls = []
    real_dense, real_lanczos = spectral._dense_top_eigenvalues, spectral._lanczos_top_eigenvalues
    monkeypatch.setattr(spectral, "_dense_top_eigenvalues",
                        lambda *a: calls.append("dense") or real_dense(*a))
    monkeypatch.setattr(spectral, "_lanczos_top_eigenvalues",
                        lambda *a: calls.append("lanczos") or real_lanczos(*a))
    args = (g.m, g.n, g.indptr, g.indices, 20, 20)
    spectral.biregular_sigma2(*args)
    spectral.biregular_sigma2(g.m, g.n, g.indptr, g.indices, 20, 20, method="dense")
    assert calls == ["lanczos", "dense"]
    small = ramanujan(64, 32, 8, method="random")
    calls.clear()
    spectral.biregular_sigma2(64, 32, small.indptr, small.indices, 8, 16)
    assert calls == ["dense"]


def test_lanczos_falls_back_to_dense_on_arpack_error(monkeypatch):
    from scipy.sparse.linalg import ArpackNoConvergence

    g = ramanujan(600, 600, 20, method="random")

    def broken(*args, **kwargs):
        raise ArpackNoConvergence("forced", np.zeros(0), np.zeros((0, 0)))

    expected = spectral.biregular_sigma2(600, 600, g.indptr, g.indices, 20, 20, method="dense")
    monkeypatch.setattr(spectral, "eigsh", broken)
    got = spectral.biregular_sigma2(600, 600, g.indptr, g.indices, 20, 20, method="lanczos")
    assert got == pytest.approx(expected, rel=1e-12)


def test_irregular_top_two_dense_and_lanczos():
    rng = np.random.default_rng(1)
    B = rng.random((600, 550)) < 0.05
    g = BipartiteGraph.from_biadjacency(B)
    s = np.linalg.svd(B.astype(float), compute_uv=False)
    for method in ("dense", "lanczos"):
        s1, s2 = spectral.top_two_singular_values(g.m, g.n, g.indptr, g.indices, method=method)
        assert (s1, s2) == pytest.approx((s[0], s[1]), rel=1e-9)


def test_top_singular_value_of_signed_matrix():
    rng = np.random.default_rng(2)
    B = (rng.random((700, 600)) < 0.05) * rng.choice([-1.0, 1.0], size=(700, 600))
    S = scipy.sparse.csr_matrix(B)
    expected = np.linalg.norm(B, 2)
    assert spectral.top_singular_value(S, method="dense") == pytest.approx(expected, rel=1e-9)
    assert spectral.top_singular_value(S, method="lanczos") == pytest.approx(expected, rel=1e-9)


def test_unknown_spectral_method():
    with pytest.raises(ValueError, match="'svd'"):
        spectral.biregular_sigma2(2, 2, np.array([0, 1, 2]), np.array([0, 1]), 1, 1,
                                  method="svd")
