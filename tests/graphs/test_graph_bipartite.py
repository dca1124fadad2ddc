"""BipartiteGraph: validation, structure, immutability, spectrum against numpy's SVD."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.graphs import BipartiteGraph, complete
from rbgp.graphs.random_biregular import random_biregular


@st.composite
def biregular_graphs(draw, max_side: int = 40):
    """Random simple (c, d)-biregular graphs with m, n <= max_side."""
    n = draw(st.integers(2, max_side))
    m = draw(st.integers(1, max_side))
    step = n // math.gcd(m, n)  # valid left degrees are the multiples of n / gcd(m, n)
    c = step * draw(st.integers(1, n // step))
    seed = draw(st.integers(0, 2**32 - 1))
    return BipartiteGraph(m, n, *random_biregular(m, n, c, np.random.default_rng(seed)))


@st.composite
def zero_one_matrices(draw, max_side: int = 12):
    m, n = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    p = draw(st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((m, n)) < p


def _svals(B: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(B.astype(float), compute_uv=False)
    return np.concatenate([s, [0.0, 0.0]])


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "m, n, indptr, indices, fragment",
    [
        (2, 3, [0, 1], [0], r"m\+1 = 3"),
        (2, 3, [1, 1, 2], [0, 1], r"indptr\[0\] must be 0, got 1"),
        (2, 3, [0, 2, 1], [0, 1], "drops at row 1"),
        (2, 3, [0, 1, 3], [0, 1], r"len\(indices\) = 2"),
        (2, 3, [0, 1, 2], [0, 7], "column index 7"),
        (2, 3, [0, 1, 2], [0, -1], "column index -1"),
        (2, 3, [0, 2, 3], [2, 1, 0], "row 0 .*found 2 followed by 1"),
        (2, 3, [0, 2, 3], [1, 1, 0], "row 0 .*found 1 followed by 1"),
        (2, 3, [0, 1, 3], [0, 2, 2], "row 1 .*found 2 followed by 2"),
        (2.5, 3, [0, 1, 2], [0, 1], "2.5"),
        (True, 3, [0, 1], [0], "True"),
        (-1, 3, [0], [], "-1"),
        (2, 3, [0.0, 1.0, 2.0], [0, 1], "float"),
    ],
)
def test_invalid_csr_raises_naming_value(m, n, indptr, indices, fragment):
    with pytest.raises(ValueError, match=fragment):
        BipartiteGraph(m, n, np.asarray(indptr), np.asarray(indices))


def test_row_boundaries_allow_decreasing_indices():
    g = BipartiteGraph(3, 4, np.array([0, 2, 2, 4]), np.array([2, 3, 0, 1]))
    assert g.num_edges == 4 and list(g.left_degrees()) == [2, 0, 2]


def test_from_neighbors_sorts_and_rejects_repeats():
    g = BipartiteGraph.from_neighbors(5, np.array([[3, 1], [0, 4], [2, 1]]))
    assert g.neighbors.tolist() == [[1, 3], [0, 4], [1, 2]]
    with pytest.raises(ValueError, match="row 1 lists neighbour 4"):
        BipartiteGraph.from_neighbors(5, np.array([[3, 1], [4, 4]]))
    with pytest.raises(ValueError, match="2-D"):
        BipartiteGraph.from_neighbors(5, np.array([1, 2]))


def test_from_biadjacency_roundtrip_and_validation():
    B = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
    g = BipartiteGraph.from_biadjacency(B, name="x")
    assert np.array_equal(g.biadjacency(), B.astype(bool)) and g.name == "x"
    assert g.biadjacency().dtype == bool
    with pytest.raises(ValueError, match="2"):
        BipartiteGraph.from_biadjacency(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="2-D"):
        BipartiteGraph.from_biadjacency(np.ones(3))


def test_immutable():
    g = complete(2, 3)
    with pytest.raises(AttributeError):
        g.m = 5
    with pytest.raises(ValueError):
        g.indices[0] = 2
    with pytest.raises(ValueError):
        g.indptr[0] = 1


# ---------------------------------------------------------------- structure
def test_degrees_regularity_and_errors():
    g = BipartiteGraph.from_biadjacency(np.array([[1, 1, 0], [0, 1, 1]]))
    assert g.is_left_regular and not g.is_biregular and g.left_degree == 2
    assert list(g.right_degrees()) == [1, 2, 1]
    with pytest.raises(ValueError, match="1..2"):
        g.right_degree
    h = BipartiteGraph.from_biadjacency(np.array([[1, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="1..2"):
        h.left_degree
    with pytest.raises(ValueError):
        h.neighbors


def test_complete_graph_properties():
    g = complete(3, 5)
    assert g.is_complete and g.is_biregular and g.density == 1.0 and g.name == "complete"
    assert (g.left_degree, g.right_degree) == (5, 3)
    assert g.sigma1() == pytest.approx(math.sqrt(15)) and g.sigma2() == pytest.approx(0, abs=1e-12)
    assert g.is_ramanujan() and g.storage_bytes() == 8
    for bad in (0, 2.0, -3):
        with pytest.raises(ValueError, match=str(bad)):
            complete(bad, 3)


@given(zero_one_matrices())
@settings(max_examples=40, deadline=None)
def test_transpose_storage_and_density(B):
    g = BipartiteGraph.from_biadjacency(B)
    t = g.transpose()
    assert np.array_equal(t.biadjacency(), B.T)
    assert t.transpose() == g
    assert g.density == pytest.approx(B.mean())
    assert np.array_equal(g.left_degrees(), B.sum(1)) and np.array_equal(g.right_degrees(),
                                                                           B.sum(0))
    expected = 8 if B.all() else (4 * B.size // B.shape[1] * g.left_degree
                                  if g.is_left_regular else 4 * (B.shape[0] + 1 + B.sum()))
    assert g.storage_bytes() == expected


def test_complement_has_same_nontrivial_spectrum():
    g = BipartiteGraph.from_neighbors(8, np.array([[i, (i + 1) % 8, (i + 3) % 8]
                                                   for i in range(8)]))
    h = g.complement()
    assert (h.left_degree, h.right_degree) == (5, 5)
    assert np.array_equal(h.biadjacency(), ~g.biadjacency())
    assert h.sigma2() == pytest.approx(g.sigma2(), rel=1e-10)


def test_fingerprint_and_equality_ignore_name():
    a = BipartiteGraph.from_biadjacency(np.eye(3), name="a")
    b = BipartiteGraph.from_biadjacency(np.eye(3), name="b")
    c = BipartiteGraph.from_biadjacency(np.eye(3)[::-1])
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert a != c and a.fingerprint() != c.fingerprint()
    assert len(a.fingerprint()) == 64
    # The hash covers the shape too, not only the edge list.
    assert (BipartiteGraph(1, 2, np.array([0, 1]), np.array([0])).fingerprint()
            != BipartiteGraph(1, 3, np.array([0, 1]), np.array([0])).fingerprint())


def test_summary_fields():
    g = BipartiteGraph.from_biadjacency(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]]), name="s")
    s = g.summary()
    assert s["left_degree"] == [1, 2] and s["right_degree"] == [1, 2] and s["name"] == "s"
    assert set(s) >= {"m", "n", "density", "sigma1", "sigma2", "bound", "margin", "ramanujan",
                      "normalized_sigma2"}
    assert s["margin"] == pytest.approx(s["bound"] - s["sigma2"])
    assert isinstance(s["ramanujan"], bool)


# ---------------------------------------------------------------- spectrum
@given(biregular_graphs())
@settings(max_examples=60, deadline=None)
def test_biregular_sigmas_match_svd(g):
    s = _svals(g.biadjacency())
    c, d = g.left_degree, g.right_degree
    assert g.m * c == g.n * d == g.num_edges
    assert g.sigma1() == pytest.approx(s[0], rel=1e-9, abs=1e-9)
    assert g.sigma2() == pytest.approx(s[1], rel=1e-8, abs=1e-7)
    assert g.margin() == pytest.approx(math.sqrt(c - 1) + math.sqrt(d - 1) - g.sigma2())
    assert 0 <= g.normalized_sigma2() <= 1
    assert g.spectral_gap() == pytest.approx(1 - g.sigma2() / g.sigma1())
    connected = s[1] < s[0] * (1 - 1e-9)
    assert g.is_ramanujan() == (connected and s[1] <= g.ramanujan_bound() + 1e-9 * s[0])


@given(zero_one_matrices())
@settings(max_examples=60, deadline=None)
def test_irregular_sigmas_match_svd(B):
    g = BipartiteGraph.from_biadjacency(B)
    s = _svals(B)
    assert g.sigma1() == pytest.approx(s[0], abs=1e-8)
    assert g.sigma2() == pytest.approx(s[1], abs=1e-6)
    if not g.is_biregular and g.num_edges:
        c, d = g.num_edges / g.m, g.num_edges / g.n
        expected = math.sqrt(max(c - 1, 0)) + math.sqrt(max(d - 1, 0))
        assert g.ramanujan_bound() == pytest.approx(expected)


@pytest.mark.parametrize("p, q", [(4, 4), (3, 5), (8, 8)])
def test_disconnected_block_diagonal_is_not_ramanujan(p, q):
    B = np.zeros((2 * p, 2 * q), bool)
    B[:p, :q] = B[p:, q:] = True
    g = BipartiteGraph.from_biadjacency(B)
    assert g.is_biregular
    # The bound sqrt(q-1)+sqrt(p-1) can exceed sigma2 = sigma1 = sqrt(pq): connectivity decides.
    assert g.sigma2() == pytest.approx(g.sigma1())
    assert not g.is_ramanujan()
    assert g.spectral_gap() == pytest.approx(0, abs=1e-9)


def test_degree_two_cycle_vs_two_cycles():
    """With c = d = 2 the bound equals sigma1: only the connectivity clause separates these."""
    def cycle_union(lengths):
        rows, cols, off = [], [], 0
        for L in lengths:
            for i in range(L):
                rows += [off + i, off + i]
                cols += [off + i, off + (i + 1) % L]
            off += L
        B = np.zeros((off, off), bool)
        B[rows, cols] = True
        return BipartiteGraph.from_biadjacency(B)

    assert cycle_union([8]).is_ramanujan()
    assert not cycle_union([4, 4]).is_ramanujan()


def test_edgeless_and_tiny_graphs():
    g = BipartiteGraph(3, 4, np.zeros(4, np.int64), np.zeros(0, np.int64))
    assert g.sigma1() == 0 and g.sigma2() == 0 and not g.is_ramanujan()
    assert g.normalized_sigma2() == 1.0
    one = complete(1, 5)
    assert one.sigma2() == 0 and one.is_ramanujan()
