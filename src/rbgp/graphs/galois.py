"""Finite-field arithmetic GF(q) for q prime or a power of two, vectorised over numpy arrays.

Elements are the integers 0..q-1. For a prime q they are residues mod q; for q = 2^e they are
polynomials over GF(2) in bit form (bit t = coefficient of x^t), multiplied modulo a fixed
irreducible polynomial per e, so that every field, and every graph built on it, is reproducible.
"""

from __future__ import annotations

import numpy as np

# A fixed irreducible (in fact primitive) polynomial of degree e over GF(2), bit form incl. x^e.
IRREDUCIBLE_POLYNOMIALS: dict[int, int] = {
    1: 0b11,  # x + 1
    2: 0b111,  # x^2 + x + 1
    3: 0b1011,  # x^3 + x + 1
    4: 0b10011,  # x^4 + x + 1
    5: 0b100101,  # x^5 + x^2 + 1
    6: 0b1000011,  # x^6 + x + 1
    7: 0b10000011,  # x^7 + x + 1
    8: 0b100011101,  # x^8 + x^4 + x^3 + x^2 + 1
    9: 0b1000010001,  # x^9 + x^4 + 1
    10: 0b10000001001,  # x^10 + x^3 + 1
    11: 0b100000000101,  # x^11 + x^2 + 1
    12: 0b1000001010011,  # x^12 + x^6 + x^4 + x + 1
    13: 0b10000000011011,  # x^13 + x^4 + x^3 + x + 1
    14: 0b100010001000011,  # x^14 + x^10 + x^6 + x + 1
    15: 0b1000000000000011,  # x^15 + x + 1
    16: 0b10001000000001011,  # x^16 + x^12 + x^3 + x + 1
}


def is_prime(q: int) -> bool:
    """Trial-division primality test (field orders here are small)."""
    if q < 2:
        return False
    if q % 2 == 0:
        return q == 2
    f = 3
    while f * f <= q:
        if q % f == 0:
            return False
        f += 2
    return True


def power_of_two_exponent(q: int) -> int | None:
    """e with q == 2^e (e >= 1), else None."""
    if q >= 2 and q & (q - 1) == 0:
        return q.bit_length() - 1
    return None


def is_field_order(q: int) -> bool:
    """True when GaloisField(q) is supported: q prime or q = 2^e with a tabulated polynomial."""
    e = power_of_two_exponent(q)
    return is_prime(q) or (e is not None and e in IRREDUCIBLE_POLYNOMIALS)


class GaloisField:
    """GF(q) with vectorised add / sub / mul on integer arrays with entries in 0..q-1."""

    def __init__(self, q: int) -> None:
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)):
            raise ValueError(f"field order must be an integer, got {q!r}")
        q = int(q)
        if not is_field_order(q):
            raise ValueError(
                f"field order q={q} is not supported: need q prime or q = 2^e with "
                f"1 <= e <= {max(IRREDUCIBLE_POLYNOMIALS)}"
            )
        self.q = q
        # None for a prime field (residue arithmetic); e for GF(2^e), e >= 2 (bit arithmetic).
        self.exponent = None if is_prime(q) else power_of_two_exponent(q)
        self.characteristic = 2 if self.exponent is not None else q

    def __repr__(self) -> str:
        return f"GaloisField({self.q})"

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        return a ^ b if self.exponent is not None else (a + b) % self.q

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        return a ^ b if self.exponent is not None else (a - b) % self.q

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self.exponent is None:
            return (a * b) % self.q
        e, poly = self.exponent, IRREDUCIBLE_POLYNOMIALS[self.exponent]
        a, b = np.broadcast_arrays(a, b)
        a, b = a.copy(), b.copy()
        result = np.zeros_like(a)
        for _ in range(e):  # carry-less shift-and-add, reducing a modulo poly at each step
            result ^= np.where(b & 1, a, 0)
            b >>= 1
            a <<= 1
            a = np.where(a & (1 << e), a ^ poly, a)
        return result

    def power_basis(self) -> np.ndarray:
        """1, x, ..., x^(e-1) for GF(2^e) (an additive basis); [1] for a prime field."""
        if self.exponent is None:
            return np.array([1], np.int64)
        return np.array([1 << t for t in range(self.exponent)], np.int64)

    def spanning_order(self) -> np.ndarray:
        """All q elements, starting 0, 1, x, x^2, ... so that short prefixes already span F
        additively (avoids proper additive subgroups, which disconnect the affine lift)."""
        head = np.concatenate([[0], self.power_basis()]).astype(np.int64)
        rest = np.setdiff1d(np.arange(self.q, dtype=np.int64), head)
        return np.concatenate([head, rest])
