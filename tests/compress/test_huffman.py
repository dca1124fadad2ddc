"""Canonical Huffman coding: round trips, length limits, optimality, and refusal of corrupt streams."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbgp.compress.huffman import CHUNK, MAX_CODE_LENGTH, code_lengths, decode, encode


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3 * CHUNK + 5), st.sampled_from([2, 16, 256]), st.floats(0.05, 5.0), st.integers(0, 2**31))
def test_round_trip(n, alphabet, concentration, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice(alphabet, n, p=rng.dirichlet(np.full(alphabet, concentration)))
    stream = encode(x, alphabet)
    assert np.array_equal(decode(stream), x)
    assert decode(stream).dtype == np.uint8


def test_edge_cases():
    for x in (np.array([], dtype=np.int64), np.array([3]), np.full(5000, 7)):
        assert np.array_equal(decode(encode(x, 16)), x)
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 16\)"):
        encode(np.array([0, 16]), 16)


def test_lengths_are_limited_and_complete():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])  # the worst case for code length: 39-bit plain Huffman codes
    lengths = code_lengths(np.array(fib))
    assert lengths.max() == MAX_CODE_LENGTH
    assert sum(2.0 ** -lengths) == pytest.approx(1.0)  # a complete prefix code
    x = np.repeat(np.arange(40), np.minimum(fib, 3000))
    assert np.array_equal(decode(encode(x, 40)), x)


def test_huffman_is_optimal_on_dyadic_counts():
    counts = np.array([8, 4, 2, 1, 1, 0])
    assert code_lengths(counts).tolist() == [1, 2, 3, 4, 4, 0]
    x = np.repeat(np.arange(6), counts * 100)
    assert len(encode(x, 6).data) * 8 == pytest.approx(100 * (8 + 8 + 6 + 8), abs=7)


def test_corrupt_streams_are_refused():
    rng = np.random.default_rng(1)
    x = rng.choice(16, 3 * CHUNK + 17, p=rng.dirichlet(np.ones(16)))
    good = encode(x, 16)
    bad = [
        dataclasses.replace(good, count=len(good.data) * 8 + 1),  # more symbols than bits
        dataclasses.replace(good, offsets=good.offsets[:-1]),
        dataclasses.replace(good, offsets=good.offsets[::-1].copy()),
        dataclasses.replace(good, lengths=np.full(16, 1, dtype=np.uint8)),  # Kraft sum 8
        dataclasses.replace(good, lengths=np.zeros(16, dtype=np.uint8)),
        dataclasses.replace(good, data=good.data[:-40]),  # truncated
    ]
    for stream in bad:
        with pytest.raises(ValueError, match="corrupt Huffman stream"):
            decode(stream)
    shifted = good.offsets.copy()
    shifted[1] += 1
    with pytest.raises(ValueError, match="do not line up"):
        decode(dataclasses.replace(good, offsets=shifted))
