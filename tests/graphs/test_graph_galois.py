"""GF(q) arithmetic: field axioms on full tables, irreducibility of every tabulated polynomial."""

import numpy as np
import pytest

from rbgp.graphs.galois import (
    IRREDUCIBLE_POLYNOMIALS,
    GaloisField,
    is_field_order,
    is_prime,
    power_of_two_exponent,
)


def _gf2_mulmod(a: int, b: int, f: int) -> int:
    deg = f.bit_length() - 1
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a >> deg & 1:
            a ^= f
    return r


def _gf2_mod(a: int, f: int) -> int:
    deg = f.bit_length() - 1
    while a and a.bit_length() - 1 >= deg:
        a ^= f << (a.bit_length() - 1 - deg)
    return a


def _gf2_gcd(a: int, b: int) -> int:
    while b:
        a, b = b, _gf2_mod(a, b)
    return a


def _is_irreducible(f: int) -> bool:
    """Rabin's test: x^(2^e) = x mod f, and gcd(x^(2^(e/r)) - x, f) = 1 for primes r | e."""
    e = f.bit_length() - 1

    def x_pow_2_pow(k: int) -> int:
        y = _gf2_mod(0b10, f)
        for _ in range(k):
            y = _gf2_mulmod(y, y, f)
        return y

    x = _gf2_mod(0b10, f)
    if x_pow_2_pow(e) != x:
        return False
    primes = [r for r in range(2, e + 1) if e % r == 0 and is_prime(r)]
    return all(_gf2_gcd(f, x_pow_2_pow(e // r) ^ x) == 1 for r in primes)


@pytest.mark.parametrize("e", sorted(IRREDUCIBLE_POLYNOMIALS))
def test_tabulated_polynomials_are_irreducible_of_right_degree(e):
    f = IRREDUCIBLE_POLYNOMIALS[e]
    assert f.bit_length() - 1 == e
    assert _is_irreducible(f)


def test_irreducibility_checker_rejects_reducible():
    assert not _is_irreducible(0b101)  # x^2 + 1 = (x + 1)^2
    assert not _is_irreducible(0b10101)  # x^4 + x^2 + 1 = (x^2 + x + 1)^2


@pytest.mark.parametrize("q", [2, 3, 4, 5, 7, 8, 11, 16, 32, 64, 128, 256])
def test_field_axioms_on_full_tables(q):
    F = GaloisField(q)
    a = np.arange(q)
    add = F.add(a[:, None], a[None, :])
    mul = F.mul(a[:, None], a[None, :])
    assert np.array_equal(add, add.T) and np.array_equal(mul, mul.T)
    # (F, +) and (F*, x) are groups: every row of the tables is a permutation.
    assert all(np.array_equal(np.sort(row), a) for row in add)
    assert all(np.array_equal(np.sort(row), a[1:]) for row in mul[1:, 1:])
    assert np.all(add[0] == a) and np.all(mul[1] == a) and np.all(mul[0] == 0)
    assert np.all(F.sub(add, a[None, :]) == a[:, None])
    rng = np.random.default_rng(q)
    x, y, z = rng.integers(0, q, size=(3, 2000))
    assert np.array_equal(F.mul(F.mul(x, y), z), F.mul(x, F.mul(y, z)))
    assert np.array_equal(F.add(F.add(x, y), z), F.add(x, F.add(y, z)))
    assert np.array_equal(F.mul(x, F.add(y, z)), F.add(F.mul(x, y), F.mul(x, z)))


def test_large_binary_field_has_no_zero_divisors_on_samples():
    F = GaloisField(1 << 16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(1, 1 << 16, size=(2, 100000))
    assert np.all(F.mul(x, y) != 0)
    assert np.array_equal(F.mul(x, y), F.mul(y, x))


def test_order_helpers():
    assert [q for q in range(1, 40) if is_prime(q)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    assert power_of_two_exponent(64) == 6 and power_of_two_exponent(48) is None
    assert power_of_two_exponent(1) is None
    assert is_field_order(16) and is_field_order(13) and not is_field_order(12)
    assert not is_field_order(9)  # odd prime powers are not supported
    assert not is_field_order(1 << 17)


@pytest.mark.parametrize("q", [0, 1, 6, 9, 12, 1 << 17])
def test_unsupported_orders_raise_naming_q(q):
    with pytest.raises(ValueError, match=str(q)):
        GaloisField(q)


def test_spanning_order_starts_with_power_basis():
    F = GaloisField(32)
    order = F.spanning_order()
    assert list(order[:6]) == [0, 1, 2, 4, 8, 16]
    assert np.array_equal(np.sort(order), np.arange(32))
    assert list(GaloisField(7).spanning_order()) == list(range(7))
