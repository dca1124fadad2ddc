"""How a global sparsity is spread over a model's layers (`sparsify(..., distribution=...)`).

`sparsity` is then the fraction of zeros over all converted layers together; each rule returns one
density per layer whose non-zeros add up to that budget:

- "uniform": every layer at the same sparsity.
- "erk": Erdős-Rényi-Kernel (Evci et al., RigL, 2020): density proportional to
  (fan_in + fan_out + kh + kw) / (fan_in * fan_out * kh * kw), scaled to the budget; a layer that
  would come out denser than 1 is kept dense and the rest re-scaled.
- "hw" (hardware-aware): the rule for the grouped kernels. A layer of `out` rows at density d can
  form row groups of at most d * out / 2 rows (every input block is read by at least two groups),
  and groups under 8 rows run slower than dense. So each layer gets the density floor
  2 * MIN_GROUP_ROWS / out; layers narrower than MIN_SPARSE_WIDTH outputs stay dense (measured on
  the 2-core CPU: a 64-channel 3x3 conv at 32x32 trains slower sparse at every sparsity); the
  budget left is spread as one common density over the others, never below their floors. Big layers,
  where sparsity pays, take the sparsity that the narrow ones cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DISTRIBUTIONS = ("uniform", "erk", "hw")
MIN_GROUP_ROWS = 8
MIN_SPARSE_WIDTH = 128


def _sizes(shapes: Sequence[tuple[int, ...]]) -> list[int]:
    return [math.prod(s) for s in shapes]


def _fill(sizes: list[int], weights: list[float], floors: list[float], budget: float) -> list[float]:
    """Densities d_i = clamp(max(floor_i, c * w_i), <= 1) with sum d_i * size_i = budget (c by bisection);
    the floors when even they exceed the budget."""
    def used(c: float) -> float:
        return sum(min(1.0, max(f, c * w)) * n for n, w, f in zip(sizes, weights, floors))

    lo, hi = 0.0, 1.0
    while used(hi) < budget and hi < 1e12:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if used(mid) < budget else (lo, mid)
    return [min(1.0, max(f, hi * w)) for w, f in zip(weights, floors)]


def layer_densities(shapes: Sequence[tuple[int, ...]], sparsity: float, distribution: str) -> list[float]:
    """One density per weight shape ((out, in) or (out, in, kh, kw)) meeting the global `sparsity`
    over all of them (as nearly as the rule allows; 1.0 means: keep that layer dense)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    sizes = _sizes(shapes)
    budget = (1.0 - sparsity) * sum(sizes)
    if distribution == "uniform":
        return [1.0 - sparsity] * len(shapes)
    if distribution == "erk":
        weights = [sum(s) / math.prod(s) for s in shapes]
        return _fill(sizes, weights, [0.0] * len(shapes), budget)
    floors = [1.0 if s[0] < MIN_SPARSE_WIDTH else min(1.0, 2 * MIN_GROUP_ROWS / s[0]) for s in shapes]
    return _fill(sizes, [1.0] * len(shapes), floors, budget)
