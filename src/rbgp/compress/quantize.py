"""Weight quantisation for compressed files: per-row symmetric int8 / int4, or a 16-entry k-means codebook.

Values are quantised per output row (a row of the weight matrix; for an RBGP layer, a row of its
non-zero values), so a row of small weights keeps its precision. Error bounds, per element:

- "int8": ``|w - w_hat| <= s / 2`` with ``s = max|row| / 127`` (symbols -127..127);
- "int4": ``|w - w_hat| <= s / 2`` with ``s = max|row| / 7`` (symbols -7..7);
- "kmeans16": 16 centroids per tensor (Lloyd's algorithm from quantile starts, deterministic);
  ``|w - w_hat|`` is at most half the largest gap between neighbouring centroids, or the distance
  from the extreme values to the outer centroids; the file records the largest error it made.

Zeros stay exactly zero under int8 and int4 (symbol 0), so a sparse layer stays sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QUANTIZERS", "Quantized", "dequantize", "quantize"]

QUANTIZERS: dict[str, tuple[int, int]] = {"int8": (127, 256), "int4": (7, 16), "kmeans16": (0, 16)}
KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class Quantized:
    """Symbols in [0, alphabet) per value, and the per-row scales or the codebook that decode them."""

    kind: str
    symbols: np.ndarray  # uint8, one per value
    table: np.ndarray  # float32: per-row scales (int8/int4) or the 16 centroids (kmeans16)
    max_error: float

    @property
    def alphabet(self) -> int:
        return QUANTIZERS[self.kind][1]


def quantize(values: np.ndarray, row_ids: np.ndarray, rows: int, kind: str) -> Quantized:
    """Quantise float `values` whose row is `row_ids` (one per value, rows in [0, rows))."""
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantisation {kind!r}; valid: {', '.join(QUANTIZERS)}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("cannot quantise non-finite weights")
    if kind == "kmeans16":
        centroids = _kmeans(v, QUANTIZERS[kind][1])
        symbols = _nearest(v, centroids)
        table = centroids.astype(np.float32)
        restored = table[symbols].astype(np.float64)
    else:
        qmax, alphabet = QUANTIZERS[kind]
        peak = np.zeros(rows)
        np.maximum.at(peak, row_ids, np.abs(v))
        table = (peak / qmax).astype(np.float32)
        scale = table.astype(np.float64)[row_ids]
        q = np.where(scale > 0, np.rint(v / np.where(scale > 0, scale, 1.0)), 0.0)
        q = np.clip(q, -qmax, qmax)
        symbols = (q + alphabet // 2).astype(np.uint8)
        restored = q * scale
    return Quantized(kind, symbols, table, float(np.max(np.abs(restored - v), initial=0.0)))


def dequantize(kind: str, symbols: np.ndarray, table: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
    """float32 values from symbols and their table (row_ids: each value's row; unused for kmeans16)."""
    symbols = np.asarray(symbols).astype(np.int64)
    table = np.asarray(table, dtype=np.float32)
    if kind == "kmeans16":
        return table[symbols]
    alphabet = QUANTIZERS[kind][1]
    return ((symbols - alphabet // 2).astype(np.float32) * table[row_ids]).astype(np.float32)


def _nearest(v: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `centroids` for each value."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, v).astype(np.uint8)


def _kmeans(v: np.ndarray, k: int) -> np.ndarray:
    """k sorted 1-D centroids (Lloyd's algorithm from evenly spaced quantiles)."""
    if v.size == 0:
        return np.zeros(k)
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(KMEANS_ITERATIONS):
        idx = _nearest(v, c)
        sums = np.bincount(idx, weights=v, minlength=k)
        counts = np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new.sort()
        if np.allclose(new, c):
            break
        c = new
    return c
