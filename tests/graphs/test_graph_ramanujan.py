"""ramanujan(): every method yields verified biregular Ramanujan graphs; bad input is named."""

import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.graphs import BipartiteGraph, RamanujanError, complete, ramanujan
from rbgp.graphs.constructions import RamanujanWarning


def _check(g: BipartiteGraph, m: int, n: int, c: int) -> None:
    assert (g.m, g.n) == (m, n)
    assert g.is_biregular and g.left_degree == c and g.right_degree == m * c // n
    assert g.is_ramanujan(), g.summary()
    assert g.margin() >= -1e-9 * g.sigma1()
    B = g.biadjacency()
    assert B.sum() == m * c and np.all(B.sum(1) == c) and np.all(B.sum(0) == m * c // n)


# Sizes per side from 16 to 4096, densities 1/2 .. 1/32 (powers of two and others).
SHAPES = [
    (16, 32, 16),  # 1/2
    (2048, 512, 256),  # 1/2, rectangular
    (96, 48, 12),  # 1/4
    (200, 100, 25),  # 1/4, non power of two
    (24, 40, 5),  # 1/8, tiny degrees (5, 3)
    (640, 320, 40),  # 1/8
    (1000, 500, 50),  # 1/10
    (3072, 1536, 96),  # 1/16
    (512, 256, 8),  # 1/32
    (1024, 4096, 128),  # 1/32, wide
    (4096, 4096, 256),  # 1/16, the performance target shape
]


@pytest.mark.parametrize("m, n, c", SHAPES)
def test_random_method_is_verified_biregular_ramanujan(m, n, c):
    start = time.perf_counter()
    g = ramanujan(m, n, c, method="random", seed=7)
    elapsed = time.perf_counter() - start
    if (m, n) == (4096, 4096):
        print(f"\nramanujan(4096, 4096, 256) build+verify: {elapsed:.2f} s")  # informative only
    assert g.name == "ramanujan-random"
    _check(g, m, n, c)


@st.composite
def _small_shapes(draw):
    """m, n in 16..256 with density 1/q (q = 2..32) and both degrees >= 3."""
    q = draw(st.sampled_from([2, 3, 4, 5, 8, 16, 32]))
    c = draw(st.integers(3, 256 // q))  # left degree; n = c q
    d = draw(st.integers(max(3, -(-16 // q)), 256 // q))  # right degree; m = d q
    return d * q, c * q, c


@given(_small_shapes(), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_small_random_draws(shape, seed):
    m, n, c = shape
    _check(ramanujan(m, n, c, method="random", seed=seed), m, n, c)


@pytest.mark.parametrize("m, n, c", [(64, 64, 48), (100, 50, 40), (128, 256, 254)])
def test_density_above_half_uses_complement(m, n, c):
    g = ramanujan(m, n, c, seed=1)
    assert g.name == "ramanujan-random(complement)"
    _check(g, m, n, c)


@pytest.mark.parametrize(
    "m, n, c, q",
    [
        (256, 256, 16, 16),  # AG(2, 16): k = l = q
        (512, 256, 8, 32),  # k = 16, l = 8, q = 32
        (4096, 4096, 64, 64),  # AG(2, 64)
        (66, 55, 5, 11),  # prime field: k = 6, l = 5, q = 11
        (35, 35, 5, 7),  # prime field: k = l = 5
    ],
)
def test_algebraic_method(m, n, c, q):
    g = ramanujan(m, n, c, method="algebraic")
    assert g.name == f"ramanujan-algebraic(q={q})"
    _check(g, m, n, c)
    assert g.sigma2() <= math.sqrt(q) + 1e-9
    if max(m, n) == q * q:  # a full AG(2, q) side: every nontrivial sigma equals sqrt(q)
        assert g.sigma2() == pytest.approx(math.sqrt(q), rel=1e-10)
    if m <= 1024:  # two rows share at most one column: no 4-cycles
        B = g.biadjacency().astype(np.int32)
        overlap = B @ B.T
        np.fill_diagonal(overlap, 0)
        assert overlap.max() <= 1


def test_auto_prefers_algebraic_when_it_fits_else_random():
    assert ramanujan(256, 256, 16).name == "ramanujan-algebraic(q=16)"
    assert ramanujan(256, 256, 32).name == "ramanujan-random"  # q = 8 < k = 32
    assert ramanujan(96, 48, 12).name == "ramanujan-random"  # q = 4, k = 24 > q


def test_algebraic_retries_with_random_multipliers_when_canonical_fails():
    # k = l = 2 over GF(4): the canonical choice {0, 1} spans only GF(2) (disconnected); the
    # bound 2 equals sigma1 so no choice is Ramanujan, and the error reports the best margin.
    with pytest.raises(RamanujanError, match="8x8.*margin"):
        ramanujan(8, 8, 2, method="algebraic", max_tries=3)


@pytest.mark.parametrize("m, n, c", [(128, 64, 8), (512, 256, 16), (96, 64, 32), (1024, 1024, 64)])
def test_lift_method(m, n, c):
    g = ramanujan(m, n, c, method="lift", seed=2)
    assert g.name == "ramanujan-lift"
    _check(g, m, n, c)


def test_full_degree_gives_complete_graph():
    for method in ("auto", "random", "algebraic", "lift"):
        g = ramanujan(12, 8, 8, method=method)
        assert g.is_complete and g == complete(12, 8)


# ---------------------------------------------------------------- failures and bad arguments
def test_impossible_shape_strict_raises_and_lenient_warns():
    # Left degree 1 on 8x8 is a perfect matching: always disconnected, never Ramanujan.
    with pytest.raises(RamanujanError, match=r"8x8.*left degree 1.*best margin"):
        ramanujan(8, 8, 1, max_tries=3)
    with pytest.warns(RamanujanWarning, match="best margin"):
        g = ramanujan(8, 8, 1, strict=False, max_tries=2)
    assert g.is_biregular and g.left_degree == 1 and not g.is_ramanujan()
    assert issubclass(RamanujanError, ValueError)


def test_lenient_mode_is_silent_when_it_succeeds():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ramanujan(64, 32, 8, strict=False)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(m=64, n=32, left_degree=2.5), "2.5"),
        (dict(m=64, n=32, left_degree=True), "True"),
        (dict(m=64, n=32, left_degree="8"), "'8'"),
        (dict(m=64, n=48, left_degree=5), r"left_degree=5.*multiples of 3.*nearest: 3, 6"),
        (dict(m=64, n=32, left_degree=0), "got 0"),
        (dict(m=64, n=32, left_degree=33), "got 33"),
        (dict(m=64.0, n=32, left_degree=8), "64.0"),
        (dict(m=0, n=32, left_degree=8), "got 0"),
        (dict(m=64, n=-32, left_degree=8), "-32"),
        (dict(m=64, n=32, left_degree=8, method="spectral"), "'spectral'"),
        (dict(m=64, n=32, left_degree=8, seed=-1), "-1"),
        (dict(m=64, n=32, left_degree=8, seed=1.5), "1.5"),
        (dict(m=64, n=32, left_degree=8, max_tries=0), "max_tries"),
        (dict(m=64, n=32, left_degree=8, strict="yes"), "'yes'"),
        (dict(m=100, n=100, left_degree=10, method="algebraic"), r"q = 100/10 = 10"),
        (dict(m=128, n=64, left_degree=16, method="algebraic"), r"k = m/q = 32 and l = 16.*q = 4"),
        (dict(m=96, n=48, left_degree=16, method="lift"), r"48/16"),
        (dict(m=80, n=80, left_degree=8, method="lift"), r"80/8 is not a power of two"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ramanujan(**kwargs)


def test_near_biregular_balances_column_degrees_and_is_seeded():
    from rbgp.graphs import near_biregular

    g = near_biregular(43, 16, 3, seed=0)
    assert g.is_left_regular and g.left_degree == 3
    degrees = g.right_degrees()
    assert degrees.max() - degrees.min() == 1 and degrees.sum() == 43 * 3
    assert g.spectral_gap() > 0
    assert g == near_biregular(43, 16, 3, seed=0) and g != near_biregular(43, 16, 3, seed=1)
    assert near_biregular(32, 16, 4, seed=0).is_biregular  # a biregular shape gets a biregular graph
