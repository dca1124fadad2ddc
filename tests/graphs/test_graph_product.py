"""ProductGraph equals the Kronecker product of its factors, computed without building it."""

import math
from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.graphs import BipartiteGraph, ProductGraph, complete, product, ramanujan
from rbgp.graphs.random_biregular import random_biregular


@st.composite
def factor(draw):
    """A small left-regular factor: complete, biregular random, or left-regular irregular."""
    kind = draw(st.sampled_from(["complete", "biregular", "left-regular"]))
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    if kind == "complete":
        return complete(m, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "biregular":
        step = n // math.gcd(m, n)
        c = step * draw(st.integers(1, n // step))
        return BipartiteGraph(m, n, *random_biregular(m, n, c, rng))
    c = draw(st.integers(1, n))
    return BipartiteGraph.from_neighbors(n, np.array([rng.permutation(n)[:c] for _ in range(m)]))


factor_lists = st.lists(factor(), min_size=1, max_size=3)


@given(factor_lists)
@settings(max_examples=60, deadline=None)
def test_product_matches_kron(factors):
    p = product(*factors)
    K = reduce(np.kron, [f.biadjacency() for f in factors]).astype(bool)
    assert p.biadjacency().dtype == bool and np.array_equal(p.biadjacency(), K)
    assert (p.m, p.n) == K.shape and p.num_edges == K.sum()
    assert p.density == pytest.approx(K.mean())
    assert p.left_degree == math.prod(f.left_degree for f in factors) == K.sum(1)[0]
    nb = p.neighbors
    assert nb.dtype == np.int64 and nb.shape == (p.m, p.left_degree)
    assert all(np.array_equal(nb[u], np.nonzero(K[u])[0]) for u in range(p.m))
    g = p.to_graph()
    assert np.array_equal(g.biadjacency(), K)
    assert np.array_equal(p.left_degrees(), K.sum(1)) and np.array_equal(p.right_degrees(),
                                                                           K.sum(0))
    assert p.storage_bytes() == sum(f.storage_bytes() for f in factors)


@given(st.lists(factor(), min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_product_spectrum_from_factors(factors):
    p = product(*factors)
    K = reduce(np.kron, [f.biadjacency() for f in factors]).astype(float)
    s = np.concatenate([np.linalg.svd(K, compute_uv=False), [0.0]])
    assert p.sigma1() == pytest.approx(s[0], rel=1e-9)
    assert p.normalized_sigma2() == pytest.approx(max(f.normalized_sigma2() for f in factors))
    if s[0] > 0:
        assert p.normalized_sigma2() == pytest.approx(s[1] / s[0], abs=1e-9)
        assert p.sigma2() == pytest.approx(s[1], abs=1e-8)
    assert p.spectral_gap() == pytest.approx(1 - p.normalized_sigma2())
    if p.is_biregular:
        g = p.to_graph()
        assert p.ramanujan_bound() == pytest.approx(g.ramanujan_bound())
        assert p.is_ramanujan() == g.is_ramanujan()


def test_product_of_ramanujan_and_complete_graphs():
    r1, r2 = ramanujan(16, 16, 4, seed=1), ramanujan(32, 16, 4, method="random", seed=2)
    p = product(r1, complete(2, 1), r2)
    assert (p.m, p.n) == (16 * 2 * 32, 16 * 16)
    assert (p.left_degree, p.right_degree) == (4 * 1 * 4, 4 * 2 * 8)
    assert p.density == pytest.approx(r1.density * r2.density)
    assert p.normalized_sigma2() == max(r1.normalized_sigma2(), r2.normalized_sigma2())
    g = p.to_graph()
    assert g.normalized_sigma2() == pytest.approx(p.normalized_sigma2(), rel=1e-9)
    assert g.sigma2() == pytest.approx(p.sigma2(), rel=1e-9)
    assert p.margin() == pytest.approx(p.ramanujan_bound() - p.sigma2())
    assert p.storage_bytes() == r1.storage_bytes() + 8 + r2.storage_bytes()
    summary = p.summary()
    assert len(summary["factors"]) == 3 and summary["factors"][1]["name"] == "complete"
    assert summary["sigma2"] == pytest.approx(p.sigma2())


def test_disconnected_factor_makes_product_not_ramanujan():
    block = np.zeros((4, 4), bool)
    block[:2, :2] = block[2:, 2:] = True
    p = product(ramanujan(16, 16, 4), BipartiteGraph.from_biadjacency(block))
    assert p.normalized_sigma2() == pytest.approx(1.0) and not p.is_ramanujan()
    assert not p.to_graph().is_ramanujan()


def test_fingerprint_depends_on_factor_order():
    a, b = ramanujan(16, 16, 4), complete(2, 3)
    assert product(a, b).fingerprint() == product(a, b).fingerprint()
    assert product(a, b).fingerprint() != product(b, a).fingerprint()
    assert product(a, b) == product(a, b) and product(a, b) != product(b, a)


def test_irregular_factor_materialises_and_degree_errors():
    irregular = BipartiteGraph.from_biadjacency(np.array([[1, 1, 0], [0, 0, 1]]))
    p = product(complete(2, 2), irregular)
    K = np.kron(np.ones((2, 2), bool), irregular.biadjacency())
    assert np.array_equal(p.to_graph().biadjacency(), K)
    with pytest.raises(ValueError, match="not left-regular"):
        p.left_degree
    with pytest.raises(ValueError):
        p.neighbors
    assert p.summary()["left_degree"] == [2, 4]


def test_product_arguments_validated():
    with pytest.raises(ValueError, match="none"):
        product()
    with pytest.raises(ValueError, match="factor 1 must be a BipartiteGraph.*ndarray"):
        product(complete(2, 2), np.ones((2, 2)))
    assert isinstance(product(complete(2, 2)), ProductGraph)
    a, b = complete(2, 3), ramanujan(16, 16, 4)
    assert ProductGraph(a, b) == ProductGraph([a, b]) == ProductGraph((a, b)) == product(a, b)
    assert ProductGraph(a).factors == (a,)
    with pytest.raises(ValueError, match="none"):
        ProductGraph([])
    with pytest.raises(AttributeError):
        product(complete(2, 2)).factors = ()
