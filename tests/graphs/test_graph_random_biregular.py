"""The configuration-model sampler with swap repair: exact degrees, simple graphs, both counters."""

import numpy as np
import pytest

from rbgp.graphs import BipartiteGraph
from rbgp.graphs import random_biregular as rb


def _assert_simple_with_degrees(m, n, indptr, indices, r, s):
    g = BipartiteGraph(m, n, indptr, indices)  # validates sorted, unique columns per row
    assert np.array_equal(g.left_degrees(), r) and np.array_equal(g.right_degrees(), s)


@pytest.mark.parametrize("seed", range(5))
def test_irregular_degree_sequences(seed):
    rng = np.random.default_rng(seed)
    m, n = 60, 45
    r = rng.integers(0, 20, size=m)
    s = np.bincount(rng.choice(n, size=r.sum()), minlength=n)  # same total, random columns
    if s.max() > m:
        pytest.skip("column degree exceeds m")
    _assert_simple_with_degrees(m, n, *rb.random_bipartite(r, s, rng), r, s)


def test_sorted_key_counter_gives_same_kind_of_graph(monkeypatch):
    monkeypatch.setattr(rb, "DENSE_COUNTER_MAX_CELLS", 0)
    m, n, c = 300, 200, 50
    indptr, indices = rb.random_biregular(m, n, c, np.random.default_rng(0))
    _assert_simple_with_degrees(m, n, indptr, indices, np.full(m, c), np.full(n, m * c // n))


def test_same_generator_state_same_graph():
    a = rb.random_biregular(128, 96, 24, np.random.default_rng([4, 0]))
    b = rb.random_biregular(128, 96, 24, np.random.default_rng([4, 0]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dense_degrees_via_complement():
    m, n, c = 40, 40, 39  # complement is a perfect matching: hopeless for swaps, easy here
    indptr, indices = rb.random_biregular(m, n, c, np.random.default_rng(0))
    _assert_simple_with_degrees(m, n, indptr, indices, np.full(m, c), np.full(n, c))


def test_unrealisable_sequence_raises_sampling_error(monkeypatch):
    monkeypatch.setattr(rb, "STALL_ROUNDS", 5)
    with pytest.raises(rb.SamplingError, match="stalled"):
        rb.random_bipartite(np.array([2, 0]), np.array([2, 0]), np.random.default_rng(0))


def test_bad_degree_sequences():
    with pytest.raises(ValueError, match="sums differ"):
        rb.random_bipartite(np.array([1, 1]), np.array([1]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="degrees must lie"):
        rb.random_bipartite(np.array([5]), np.array([5]), np.random.default_rng(0))  # 5 > n = 1
    with pytest.raises(ValueError, match="not a multiple"):
        rb.random_biregular(64, 48, 5, np.random.default_rng(0))
