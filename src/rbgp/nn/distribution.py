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
  2 * MIN_GROUP_ROWS / out; layers narrower than MIN_SPARSE_WIDTH outputs stay dense (a 32-row
  layer's 8-row groups would each read half its inputs; a 64-channel conv at its floor of 0.25
  density still runs faster than dense, `benchmarks/models-cpu.md`); the
  budget left is spread as one common density over the others, never below their floors. Big layers,
  where sparsity pays, take the sparsity that the narrow ones cannot. When the budget is too small
  for that (a small model at a high sparsity, a bottleneck ResNet), the narrow layers are made sparse
  too, and then the group floor is halved (4, 2, 1 rows) one layer width at a time, narrowest first,
  until the budget is met.

`distribute` realises a rule layer by layer: each layer is planned at the density the rule gives it,
the pattern rounds it to a feasible one, and the rule is solved again over the layers left with the
budget left, so the rounding does not add up and the global budget is met as closely as the last
(smallest) layers allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

DISTRIBUTIONS = ("uniform", "erk", "hw")
DEFAULT_DISTRIBUTION = "hw"
MIN_GROUP_ROWS = 8
MIN_SPARSE_WIDTH = 64


def hw_group_rows(out: int) -> int:
    """Rows per group the hw rule asks the planner for: MIN_GROUP_ROWS, 16 for layers of 512 rows or
    more (oneDNN's weight gradient of 8-row groups on small maps runs several times slower than of
    16-row groups, `benchmarks/models-cpu.md`)."""
    return min(2 * MIN_GROUP_ROWS, max(MIN_GROUP_ROWS, out // 32))


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


def _hw_floors(shapes: Sequence[tuple[int, ...]], sizes: list[int], budget: float) -> list[float]:
    """The first hw floors the budget meets: narrow layers dense and 8-row groups elsewhere; then the
    narrow layers sparse too; then the group floor halved (4, 2, 1 rows) one layer width at a time,
    narrowest first, so that wide layers keep their fast groups as long as the budget allows (a narrow
    3x3 conv's halved groups run merged, at the work of its 8-row plan; a 1x1's of 4 rows still run
    sparse, of fewer as the masked dense conv)."""
    widths = sorted({s[0] for s in shapes})

    def floors(narrow_dense: bool, rows_of: Callable[[int], int]) -> list[float]:
        return [1.0 if narrow_dense and s[0] < MIN_SPARSE_WIDTH else min(1.0, 2 * rows_of(s[0]) / s[0]) for s in shapes]

    steps: list[tuple[bool, Callable[..., int]]] = [(True, lambda w: MIN_GROUP_ROWS), (False, lambda w: MIN_GROUP_ROWS)]
    for k in range(1, MIN_GROUP_ROWS.bit_length()):
        steps += [(False, lambda w, k=k, cut=cut: MIN_GROUP_ROWS >> (k if w <= cut else k - 1)) for cut in widths]
    for narrow_dense, rows_of in steps:
        f = floors(narrow_dense, rows_of)
        if sum(x * n for x, n in zip(f, sizes)) <= budget * (1 + 1e-12):
            return f
    return f  # even one-row groups need more than the budget: the floors (the budget is missed, and reported)


def _rule(shapes: Sequence[tuple[int, ...]], budget: float, distribution: str) -> tuple[list[float], list[float]]:
    """(weights, floors) of a non-uniform rule: densities max(floor, c * weight), capped at 1."""
    if distribution == "erk":
        return [sum(s) / math.prod(s) for s in shapes], [0.0] * len(shapes)
    return [1.0] * len(shapes), _hw_floors(shapes, [math.prod(s) for s in shapes], budget)


def layer_densities(shapes: Sequence[tuple[int, ...]], sparsity: float, distribution: str) -> list[float]:
    """One density per weight shape ((out, in) or (out, in, kh, kw)) meeting the global `sparsity` over
    all of them (as nearly as the rule allows; 1.0 means: keep that layer dense)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution == "uniform":
        return [1.0 - sparsity] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    budget = (1.0 - sparsity) * sum(sizes)
    return _fill(sizes, *_rule(shapes, budget, distribution), budget)


def distribute(
    shapes: Sequence[tuple[int, ...]],
    sparsity: float,
    distribution: str,
    realise: Callable[[int, float], float],
    rounds: int = 4,
) -> list[tuple[float, float]]:
    """(asked, built) densities per layer for "erk" or "hw": largest layer first, `realise(i, density)`
    plans layer i at the rule's density and returns the density it can really have (1.0: it stays
    dense); the rule (its floors fixed once for the whole model) is then solved again over the layers
    left with the budget left. When the last layers cannot absorb the rounding, the whole pass is
    redone with the target moved by the miss (up to `rounds` passes; the closest one is kept)."""
    if distribution not in DISTRIBUTIONS[1:]:
        raise ValueError(f"distribute takes {DISTRIBUTIONS[1:]}, got {distribution!r}")
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    if not total:
        return [(1.0, 1.0)] * len(shapes)
    weights, floors = _rule(shapes, (1.0 - sparsity) * total, distribution)
    order = sorted(range(len(shapes)), key=lambda i: (-sizes[i], i))

    def one_pass(target: float) -> tuple[list[tuple[float, float]], float]:
        budget = (1.0 - target) * total
        out = [(1.0, 1.0)] * len(shapes)
        for k, i in enumerate(order):
            rest = order[k:]
            asked = _fill([sizes[j] for j in rest], [weights[j] for j in rest], [floors[j] for j in rest], budget)[0]
            out[i] = (asked, 1.0 if asked >= 1.0 else realise(i, asked))
            budget -= out[i][1] * sizes[i]
        return out, 1.0 - sum(b * n for (_, b), n in zip(out, sizes)) / total

    best: tuple[list[tuple[float, float]], float] | None = None
    target = sparsity
    for _ in range(rounds):
        out, got = one_pass(target)
        if best is None or abs(got - sparsity) < abs(best[1] - sparsity):
            best = (out, got)
        if abs(got - sparsity) < 1e-3:
            break
        target = min(max(target + sparsity - got, 0.0), 0.999)
    assert best is not None  # rounds >= 1: set on the first pass
    return best[0]
